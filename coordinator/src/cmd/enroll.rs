//! `handover enroll HOST --address ADDR --dir CA_DIR`: give a host waiting with a
//! join token (`handover-agent join`) its certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handover_common::names::HostName;
use handover_common::tls::CredentialFiles;

use crate::config::CoordinatorConfig;
use crate::enroll::{EnrollRequest, enroll};

/// Runs `handover enroll`.
pub async fn run(
    config: &CoordinatorConfig,
    name: HostName,
    address: SocketAddr,
    ca_dir: PathBuf,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let files = CredentialFiles {
        ca: &config.ca,
        cert: &config.cert,
        key: &config.key,
    };
    let request = EnrollRequest {
        ca_dir,
        name: name.clone(),
        address,
        wait,
        only: Vec::new(),
    };
    let enrolled = enroll(&files, &request).await?;
    println!(
        "enrolled {name} at {address} with join token {} (certificate {})",
        enrolled.token,
        enrolled.cert.display()
    );
    Ok(ExitCode::SUCCESS)
}
