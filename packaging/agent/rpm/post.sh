# handover-agent %post: state directory, reload units, enable on first install.
# The start is left to the operator: the unit's ConditionPathExists= skips it
# until the credentials are in place anyway.
install -d -m 0700 -o root -g root /var/lib/handover-agent
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable handover-agent.service >/dev/null 2>&1 || :
    else
        systemctl try-restart handover-agent.service >/dev/null 2>&1 || :
    fi
fi
for f in /etc/handover/ca.pem /etc/handover/agent.pem /etc/handover/agent.key; do
    if [ ! -e "$f" ]; then
        echo "handover-agent: not started, $f is missing. On the CA host run" >&2
        echo "    handover ca issue --dir CA_DIR --role agent --name $(hostname -s) --print-install" >&2
        echo "and copy the files it names; then systemctl start handover-agent" >&2
        break
    fi
done
