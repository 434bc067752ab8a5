//! Every failed AWS call becomes one message that names the API call (as IAM
//! names the action, e.g. `ec2:RunInstances`) and what to check.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What went wrong with a call, as far as the fix is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The request never got an answer: endpoint, region or network.
    Unreachable,
    /// No credentials, or AWS did not accept them.
    Credentials,
    /// The credentials are fine, the policy lacks this action.
    Permission,
    /// Still throttled after every attempt.
    Throttled,
    /// An id or name in the request does not exist (here).
    NotFound,
    /// Anything else: the message says it.
    Other,
}

/// Sorts an error by its code (when AWS answered) or its text (when it did not).
pub fn classify(code: Option<&str>, text: &str) -> Trouble {
    match code {
        Some(
            "AuthFailure"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "RequestExpired"
            | "InvalidAccessKeyId",
        ) => Trouble::Credentials,
        Some(
            "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "Client.UnauthorizedOperation",
        ) => Trouble::Permission,
        Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException") => Trouble::Throttled,
        Some(c) if c.contains("NotFound") || c.contains(".Malformed") => Trouble::NotFound,
        Some(_) => Trouble::Other,
        None if text.to_ascii_lowercase().contains("credential") => Trouble::Credentials,
        None => Trouble::Unreachable,
    }
}

/// What to check, for `call`.
pub fn hint(call: &str, trouble: Trouble) -> String {
    match trouble {
        Trouble::Unreachable => "check the region ([aws] region or AWS_REGION), the endpoint ([aws] endpoint or AWS_ENDPOINT_URL) and that this host reaches it".into(),
        Trouble::Credentials => "check the credentials: AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the bastion's instance role, and that the clock is right".into(),
        Trouble::Permission => format!("the credentials lack the permission {call}: add it to the IAM policy (docs/aws.md lists every action used)"),
        Trouble::Throttled => "AWS kept throttling the call through every attempt: retry later, or raise [aws] max_attempts".into(),
        Trouble::NotFound => "check the ids and names in the plan and the inventory, and that [aws] region is the region they live in".into(),
        Trouble::Other => "see AWS's message above".into(),
    }
}

/// `call` failed with `err`: one message with AWS's code and text, and the fix.
pub fn failed<E, R>(call: &str, err: SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let text = match (&code, err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let trouble = classify(code.as_deref(), &text);
    anyhow::anyhow!("{call} failed: {text}; {}", hint(call, trouble))
}

/// The error's AWS code, if AWS answered.
pub fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_gets_the_fix_that_matches_it() {
        let cases = [
            (Some("UnauthorizedOperation"), "", Trouble::Permission),
            (Some("AccessDenied"), "", Trouble::Permission),
            (Some("AuthFailure"), "", Trouble::Credentials),
            (Some("InvalidClientTokenId"), "", Trouble::Credentials),
            (Some("RequestLimitExceeded"), "", Trouble::Throttled),
            (Some("Throttling"), "", Trouble::Throttled),
            (Some("InvalidInstanceID.NotFound"), "", Trouble::NotFound),
            (Some("InvalidAMIID.Malformed"), "", Trouble::NotFound),
            (Some("InsufficientInstanceCapacity"), "", Trouble::Other),
            (
                None,
                "dispatch failure: connection refused",
                Trouble::Unreachable,
            ),
            (None, "failed to load credentials", Trouble::Credentials),
        ];
        for (code, text, want) in cases {
            assert_eq!(classify(code, text), want, "{code:?} {text}");
        }
        assert!(hint("ec2:RunInstances", Trouble::Permission).contains("ec2:RunInstances"));
        assert!(hint("x", Trouble::Unreachable).contains("region"));
        assert!(hint("x", Trouble::Credentials).contains("AWS_PROFILE"));
    }
}
