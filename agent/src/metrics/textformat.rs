//! Prometheus' own text format (0.0.4), for clients that do not ask for
//! OpenMetrics: `curl`, `promtool check metrics`, older scrapers.
//!
//! prometheus-client writes OpenMetrics only. The two differ in three ways that
//! matter here: an OpenMetrics counter family `x` has samples `x_total` (the text
//! format names the family `x_total`), OpenMetrics has `# UNIT` lines, and it ends
//! with `# EOF`. Everything else (HELP, TYPE, samples, escaping) is the same.

use std::collections::HashSet;

/// The content type of [`from_openmetrics`]' output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` rewritten in the text format.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether a request's `Accept` header asks for OpenMetrics (Prometheus does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter family takes its samples' `_total` name; UNIT and EOF go;
    /// gauges and histograms are left as they are.
    #[test]
    fn counters_take_their_total_name() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{k=\"v\"} 2\n\
                  # HELP a_took_seconds Took.\n# TYPE a_took_seconds histogram\n# UNIT a_took_seconds seconds\n\
                  a_took_seconds_sum 1.5\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{k=\"v\"} 2\n\
             # HELP a_took_seconds Took.\n# TYPE a_took_seconds histogram\n\
             a_took_seconds_sum 1.5\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }

    #[test]
    fn only_an_openmetrics_accept_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
