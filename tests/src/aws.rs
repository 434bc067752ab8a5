//! AWS without AWS (issue 15): moto's server mode on a loopback port, seeded
//! with a VPC, subnet, security group, launch template, a like-instance and an
//! Auto Scaling group through the official SDK; `handover-provider-aws` run
//! against it as the coordinator runs it; and a throttling proxy that answers
//! the first N calls with AWS's throttling errors.
//!
//! moto touches no fleet address (it listens on 127.0.0.1 on a free port), so
//! these helpers do not take the fleet lock: they run beside fleet tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_autoscaling::types::LaunchTemplateSpecification as AsgTemplate;
use aws_sdk_ec2::types::{
    Filter, LaunchTemplateSpecification, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use handover_common::aws::AwsSettings;

use crate::ports::free_tcp_port;

/// The region every test uses.
pub const REGION: &str = "eu-west-1";
/// The fleet tag's value on the seeded servers.
pub const FLEET: &str = "shop";
/// The seeded Auto Scaling group.
pub const GROUP: &str = "shop-web";

/// A `moto_server` on 127.0.0.1, killed (with its process group) on drop.
pub struct Moto {
    child: Child,
    /// Its URL, `http://127.0.0.1:PORT`.
    pub url: String,
    runtime: tokio::runtime::Runtime,
    /// EC2 client pointed at it.
    pub ec2: aws_sdk_ec2::Client,
    /// Auto Scaling client pointed at it.
    pub asg: aws_sdk_autoscaling::Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The environment a provider (or the SDK in a test) gets: fixed test
/// credentials, nothing read from this machine's AWS files, no instance
/// metadata service (its address is not loopback).
pub const ENV: [(&str, &str); 6] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/handover-tests"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/handover-tests"),
    ("AWS_REGION", REGION),
];

impl Moto {
    /// Starts `moto_server` (from PyPI: `pip install 'moto[server]'`, which
    /// scripts/install-deps.sh does) and waits until it answers.
    pub fn start(log: &Path) -> anyhow::Result<Moto> {
        use std::os::unix::process::CommandExt as _;
        let port = free_tcp_port(Ipv4Addr::LOCALHOST)?;
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting moto_server: install it with scripts/install-deps.sh (pip install 'moto[server]')")?;
        let url = format!("http://127.0.0.1:{port}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = runtime.block_on(sdk_config(&url));
        let mut moto = Moto {
            child,
            url,
            runtime,
            ec2: aws_sdk_ec2::Client::new(&config),
            asg: aws_sdk_autoscaling::Client::new(&config),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited ({status}): see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not listen within 60 s: see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// Runs `f` on this harness's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// `[aws]` for this moto: the seeded fleet and group, its URL as the endpoint.
    pub fn settings(&self) -> AwsSettings {
        let text = format!(
            "fleet = \"{FLEET}\"\nregion = \"{REGION}\"\nendpoint = \"{}\"\ngroup = \"{GROUP}\"\napp_port = 8080\n",
            self.url
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("test settings: {e}"))
    }
}

async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(creds)
        .load()
        .await
}

/// What [`Moto::seed`] made.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The subnet.
    pub subnet: String,
    /// The security groups of the like-instance.
    pub groups: Vec<String>,
    /// The like-instance's AMI (the template's).
    pub ami: String,
    /// Another AMI, for overrides.
    pub other_ami: String,
    /// The launch template.
    pub template: String,
    /// `web-1`: the like-instance, tagged with the fleet.
    pub web1: String,
    /// `db-1`: an instance without the fleet tag.
    pub db1: String,
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

impl Moto {
    /// A VPC, subnet, two security groups, a launch template (t3.small, tag
    /// team=shop), `web-1` launched from it (fleet-tagged), `db-1` (not), and
    /// the group `shop-web` on the template with `AZRebalance` already
    /// suspended by its operator.
    pub fn seed(&self) -> anyhow::Result<Seeded> {
        self.block_on(self.seed_async())
    }

    async fn seed_async(&self) -> anyhow::Result<Seeded> {
        let ec2 = &self.ec2;
        let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await?;
        let vpc = vpc
            .vpc()
            .and_then(|v| v.vpc_id())
            .context("vpc id")?
            .to_owned();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block("10.0.1.0/24")
            .availability_zone(format!("{REGION}a"))
            .send()
            .await?;
        let subnet = subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .context("subnet id")?
            .to_owned();
        let mut groups = Vec::new();
        for name in ["web", "ssh"] {
            let g = ec2
                .create_security_group()
                .group_name(name)
                .description(name)
                .vpc_id(&vpc)
                .send()
                .await?;
            groups.push(g.group_id().context("group id")?.to_owned());
        }
        let images = ec2.describe_images().send().await?;
        let amis: Vec<String> = images
            .images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_owned))
            .take(2)
            .collect();
        let [ami, other_ami] = amis.as_slice() else {
            bail!("moto lists fewer than 2 AMIs");
        };
        ec2.create_key_pair().key_name("ops").send().await?;
        let template = ec2
            .create_launch_template()
            .launch_template_name(GROUP)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(ami)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Small)
                    .tag_specifications(
                        LaunchTemplateTagSpecificationRequest::builder()
                            .resource_type(ResourceType::Instance)
                            .tags(tag("team", "shop"))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await?;
        let template = template
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .context("template id")?
            .to_owned();
        let run = |name: &'static str, fleet: bool| {
            let mut tags = vec![tag("Name", name), tag("team", "shop")];
            if fleet {
                tags.push(tag("handover:fleet", FLEET));
            }
            ec2.run_instances()
                .min_count(1)
                .max_count(1)
                .launch_template(
                    LaunchTemplateSpecification::builder()
                        .launch_template_id(&template)
                        .version("1")
                        .build(),
                )
                .subnet_id(&subnet)
                .set_security_group_ids(Some(groups.clone()))
                .key_name("ops")
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .set_tags(Some(tags))
                        .build(),
                )
                .send()
        };
        let id = |out: aws_sdk_ec2::operation::run_instances::RunInstancesOutput| {
            out.instances()
                .first()
                .and_then(|i| i.instance_id())
                .map(str::to_owned)
                .context("instance id")
        };
        let web1 = id(run("web-1", true).await?)?;
        let db1 = id(run("db-1", false).await?)?;
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .launch_template(
                AsgTemplate::builder()
                    .launch_template_id(&template)
                    .version("1")
                    .build(),
            )
            .min_size(0)
            .max_size(2)
            .desired_capacity(0)
            .vpc_zone_identifier(&subnet)
            .send()
            .await?;
        self.asg
            .suspend_processes()
            .auto_scaling_group_name(GROUP)
            .scaling_processes("AZRebalance")
            .send()
            .await?;
        Ok(Seeded {
            subnet,
            groups,
            ami: ami.clone(),
            other_ami: other_ami.clone(),
            template,
            web1,
            db1,
        })
    }

    /// The instances tagged `Name=name`, with their state.
    pub fn by_name(&self, name: &str) -> anyhow::Result<Vec<aws_sdk_ec2::types::Instance>> {
        self.block_on(async {
            let out = self
                .ec2
                .describe_instances()
                .filters(Filter::builder().name("tag:Name").values(name).build())
                .send()
                .await?;
            Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances().iter().cloned())
                .collect())
        })
    }

    /// One instance by id.
    pub fn instance(&self, id: &str) -> anyhow::Result<aws_sdk_ec2::types::Instance> {
        self.block_on(async {
            let out = self
                .ec2
                .describe_instances()
                .instance_ids(id)
                .send()
                .await?;
            out.reservations()
                .iter()
                .flat_map(|r| r.instances().iter().cloned())
                .next()
                .with_context(|| format!("no instance {id}"))
        })
    }

    /// An instance's user data, decoded.
    pub fn user_data(&self, id: &str) -> anyhow::Result<String> {
        self.block_on(async {
            let out = self
                .ec2
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await?;
            let encoded = out.user_data().and_then(|u| u.value()).unwrap_or_default();
            let bytes = aws_smithy_types::base64::decode(encoded)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// The group's suspended processes, sorted.
    pub fn suspended(&self) -> anyhow::Result<Vec<String>> {
        let g = self.group()?;
        let mut out: Vec<String> = g
            .suspended_processes()
            .iter()
            .filter_map(|p| p.process_name().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The group as described now.
    pub fn group(&self) -> anyhow::Result<aws_sdk_autoscaling::types::AutoScalingGroup> {
        self.block_on(async {
            let out = self
                .asg
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(GROUP)
                .send()
                .await?;
            out.auto_scaling_groups()
                .first()
                .cloned()
                .context("no group")
        })
    }
}

/// Runs `handover-provider-aws ARGS` as the coordinator does: the settings as
/// JSON in `HANDOVER_AWS_SETTINGS`, `stdin` on its stdin, `env` added.
pub fn provider(
    settings: &AwsSettings,
    revision: Option<&str>,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Output> {
    let json = serde_json::to_string(&handover_common::aws::ProviderSettings {
        aws: settings.clone(),
        revision: revision.map(str::to_owned),
    })?;
    let mut cmd = Command::new(crate::agents::bin("handover-provider-aws"));
    cmd.args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .envs(ENV)
        .envs(env.iter().copied())
        .env(handover_common::aws::SETTINGS_ENV, json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running handover-provider-aws")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A proxy in front of moto that answers the first `throttle` requests with
/// AWS's throttling error (EC2's `RequestLimitExceeded`, Auto Scaling's
/// `Throttling`) and closes the connection, then passes every later connection
/// through untouched.
pub struct Throttler {
    /// Its URL.
    pub url: String,
    throttled: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
}

impl Throttler {
    /// Starts it in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, throttle: usize) -> anyhow::Result<Throttler> {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .context("upstream is http://ADDR:PORT")?
            .parse()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let url = format!("http://{}", listener.local_addr()?);
        let throttled = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (t, f) = (throttled.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if t.load(Ordering::SeqCst) < throttle {
                    t.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || refuse(conn));
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || pass(conn, upstream));
                }
            }
        });
        Ok(Throttler {
            url,
            throttled,
            forwarded,
        })
    }

    /// Requests answered with a throttling error so far.
    pub fn throttled(&self) -> usize {
        self.throttled.load(Ordering::SeqCst)
    }

    /// Connections passed through to moto so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }
}

/// Reads one request and answers it with the throttling error of its service.
fn refuse(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(request) = read_request(&mut conn) else {
        return;
    };
    // EC2's query API is version 2016-11-15; Auto Scaling's 2011-01-01.
    let (status, body) = if request.contains("Version=2016-11-15") {
        (
            "503 Service Unavailable",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>",
        )
    } else {
        (
            "400 Bad Request",
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>throttled</RequestId></ErrorResponse>",
        )
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// One HTTP request's head and body (by Content-Length), as text.
fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// Splices `conn` to `upstream` both ways.
fn pass(conn: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut conn_r), Ok(mut up_w)) = (conn.try_clone(), up.try_clone()) else {
        return;
    };
    let to_up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut conn_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut up_r, mut conn_w) = (up, conn);
    let _ = std::io::copy(&mut up_r, &mut conn_w);
    let _ = conn_w.shutdown(std::net::Shutdown::Write);
    let _ = to_up.join();
}
