# handover-agent %postun: on erase (rpm has no purge), remove the state and runtime
# directories the service created; reload units.
if [ "$1" -eq 0 ]; then
    rm -rf /var/lib/handover-agent /run/handover-agent
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
