//! The EC2 and Auto Scaling clients: the standard credential chain (environment,
//! profile, instance role), rustls on ring, the region and endpoint from `[aws]`
//! when given (`AWS_ENDPOINT_URL` and `AWS_REGION` otherwise), and the SDK's
//! standard retries (throttling and transient errors, exponential backoff with
//! jitter) for `[aws] max_attempts` attempts per call.

use anyhow::Context;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use handover_common::aws::AwsSettings;

/// Both clients and the settings they were made from.
pub struct Aws {
    /// EC2: instances and launch templates.
    pub ec2: aws_sdk_ec2::Client,
    /// Auto Scaling: the server array.
    pub asg: aws_sdk_autoscaling::Client,
    /// `[aws]`.
    pub settings: AwsSettings,
}

/// Loads the configuration and makes the clients (no call is made yet).
pub async fn connect(settings: AwsSettings) -> anyhow::Result<Aws> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts));
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.as_str());
    }
    let config = loader.load().await;
    config.region().context(
        "no AWS region: set [aws] region in the plan, AWS_REGION, or a region in the AWS profile",
    )?;
    Ok(Aws {
        ec2: aws_sdk_ec2::Client::new(&config),
        asg: aws_sdk_autoscaling::Client::new(&config),
        settings,
    })
}
