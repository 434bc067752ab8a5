//! TOML errors the way an operator needs them: the line and the key at fault.
//! Every config file and plan goes through [`describe`], so they all read alike.

/// `line 3 (strategy = "blue-green"): unknown variant ...`.
pub fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let Some(span) = err.span() else {
        return message.to_string();
    };
    let Some(before) = text.get(..span.start.min(text.len())) else {
        return message.to_string();
    };
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} ({line}): {message}")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        name: String,
    }

    #[test]
    fn names_the_line_at_fault() {
        let text = "name = \"web-1\"\nnmae = \"x\"\n";
        let err = toml::from_str::<Config>(text).expect_err("typo");
        let described = super::describe(text, &err);
        assert!(
            described.starts_with("line 2 (nmae = \"x\")"),
            "{described}"
        );
        assert!(described.contains("unknown field `nmae`"), "{described}");
    }
}
