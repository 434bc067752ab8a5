//! Warnings about a plan that `handover plan` accepts but that risk what the
//! operator most likely wants to keep: values that are valid, yet cut sessions.
//! Refusals (a value that cannot work, such as `quiet = "0s"`) belong to parsing
//! in [`crate::plan`]; these are what remains legal but risky.

use std::time::Duration;

use crate::plan::Plan;

/// About how long a pinned client pauses between two requests (a person reading
/// a page): a quiet period shorter than that can end while such a client is
/// between requests. Issue 14: `quiet = "0s"` cut all 8 pinned sessions of a test.
pub const THINK_TIME: Duration = Duration::from_secs(1);

/// Every warning for `plan`, worded for the operator.
pub fn plan_warnings(plan: &Plan) -> Vec<String> {
    quiet_warning(plan.file.rollout.quiet).into_iter().collect()
}

/// The warning for a `[rollout] quiet` below [`THINK_TIME`].
fn quiet_warning(quiet: Duration) -> Option<String> {
    if quiet >= THINK_TIME {
        return None;
    }
    let q = handover_common::duration::format(quiet);
    let think = handover_common::duration::format(THINK_TIME);
    Some(format!(
        "[rollout] quiet = \"{q}\" is shorter than a pinned client's usual pause between two requests (about {think}): a host can be called drained while such a client is between requests, and its session is cut when the host is detached. Give quiet at least \"{think}\" (the default is \"2s\") unless no client of this site pauses longer than {q}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_period_below_a_clients_think_time_is_warned_about_with_the_risk() {
        let warning = quiet_warning(Duration::from_millis(300)).expect("warned");
        assert!(warning.contains("quiet = \"300ms\""), "{warning}");
        assert!(warning.contains("session is cut"), "{warning}");
        assert!(warning.contains("at least \"1s\""), "{warning}");
    }

    #[test]
    fn a_quiet_period_of_a_think_time_or_more_is_not() {
        assert_eq!(quiet_warning(THINK_TIME), None);
        assert_eq!(quiet_warning(Duration::from_secs(2)), None);
    }
}
