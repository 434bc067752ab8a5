//! Man pages for the config and plan files (section 5), made from the README's
//! "Config reference": the tables an operator reads on the web are the ones `man 5
//! agent.toml` shows, so the two cannot disagree.
//!
//! The Markdown understood is the README's own subset: headings, paragraphs, lists,
//! tables of `| key | meaning | default |` and fenced code blocks, with `code`,
//! **bold** and [links](url) inline. Anything else comes out as plain text.

use std::fmt::Write as _;

/// A section-5 page: a file format, described by Markdown.
#[derive(Debug, Clone)]
pub struct FilePage {
    /// The page name, e.g. `agent.toml` (written as `agent.toml.5`).
    pub name: &'static str,
    /// One line for NAME, e.g. "the Handover agent's configuration".
    pub about: &'static str,
    /// Where the Markdown comes from, for error messages ("README.md, ...").
    pub source: &'static str,
    /// The Markdown body (empty when its source was not found: an error at
    /// `generate man`, naming `source`).
    pub markdown: String,
    /// Pages named under SEE ALSO, e.g. `handover-agent(1)`.
    pub see_also: &'static [&'static str],
}

/// The text of `doc` from the heading line starting with `heading` up to the next
/// heading of the same or a higher level, without the heading line itself.
pub fn markdown_section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].starts_with(heading))?;
    let body = start + doc[start..].find('\n')? + 1;
    let mut end = doc.len();
    let mut in_code = false;
    let mut at = body;
    for line in doc[body..].split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !in_code && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = at;
            break;
        }
        at += line.len();
    }
    Some(&doc[body..end])
}

/// The roff source of `page`, as `man` reads it.
pub fn render(page: &FilePage, version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH \"{}\" 5 \"\" \"{version}\" \"File Formats\"",
        page.name.to_uppercase()
    );
    let _ = writeln!(
        out,
        ".SH NAME\n{} \\- {}",
        escape(page.name),
        escape(page.about)
    );
    out.push_str(".SH DESCRIPTION\n");
    render_markdown(&page.markdown, &mut out);
    if !page.see_also.is_empty() {
        let _ = writeln!(out, ".SH \"SEE ALSO\"\n{}", page.see_also.join(", "));
    }
    out
}

fn render_markdown(markdown: &str, out: &mut String) {
    let mut lines = markdown.lines().peekable();
    let mut header: Option<Vec<String>> = None;
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(code) = trimmed.strip_prefix("```") {
            let _ = code;
            out.push_str(".PP\n.RS 4\n.nf\n");
            for code_line in lines.by_ref() {
                if code_line.trim() == "```" {
                    break;
                }
                let _ = writeln!(out, "{}", escape_line(code_line));
            }
            out.push_str(".fi\n.RE\n");
        } else if trimmed.starts_with('#') {
            let title = trimmed.trim_start_matches('#').trim();
            let _ = writeln!(out, ".SS \"{}\"", inline(title).replace('"', "\\(dq"));
        } else if trimmed.starts_with('|') {
            let cells: Vec<String> = trimmed
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            match &header {
                None => header = Some(cells),
                Some(h) => table_row(h, &cells, out),
            }
        } else if trimmed.is_empty() {
            header = None;
            out.push_str(".PP\n");
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            let _ = writeln!(out, ".IP \\(bu 2\n{}", escape_line(&inline(item)));
        } else {
            let _ = writeln!(out, "{}", escape_line(&inline(trimmed)));
        }
    }
}

/// One key of a `| key | meaning | default |` table as a tagged paragraph.
fn table_row(header: &[String], cells: &[String], out: &mut String) {
    let Some((key, rest)) = cells.split_first() else {
        return;
    };
    let _ = writeln!(out, ".TP\n{}", escape_line(&inline(key)));
    for (i, cell) in rest.iter().enumerate() {
        let text = escape_line(&inline(cell));
        match header.get(i + 1).map(String::as_str) {
            Some("meaning") | None => {
                let _ = writeln!(out, "{text}");
            }
            Some(label) => {
                let _ = writeln!(out, ".br\n{}: {text}", capitalize(label));
            }
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `code` and **bold** as bold, [text](url) as text; roff-escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`'
            && let Some(end) = rest[1..].find('`')
        {
            let _ = write!(out, "\\fB{}\\fR", escape(&rest[1..=end]));
            rest = &rest[end + 2..];
        } else if rest.starts_with("**")
            && let Some(end) = rest[2..].find("**")
        {
            let _ = write!(out, "\\fB{}\\fR", escape(&rest[2..end + 2]));
            rest = &rest[end + 4..];
        } else if c == '['
            && let Some(close) = rest.find("](")
            && let Some(paren) = rest[close..].find(')')
        {
            out.push_str(&escape(&rest[1..close]));
            rest = &rest[close + paren + 1..];
        } else {
            out.push_str(&escape(&rest[..c.len_utf8()]));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Backslashes and hyphens escaped (so `--config` stays two ASCII hyphens).
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line that would start with a roff control character is guarded by `\&`.
fn escape_line(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Tool\n\nintro\n\n## Config\n\nUnknown keys are errors.\n\n\
        | key | meaning | default |\n|---|---|---|\n| `name` | the host's name | required |\n\
        | `[app]` `listen` | see [docs](docs/x.md) | none |\n\n### Sub\n\n- a **list** item\n\n\
        ```toml\n.dotted = 1\n```\n\n## Next\n\nnot in it\n";

    #[test]
    fn a_section_runs_to_the_next_heading_of_its_level() {
        let body = markdown_section(DOC, "## Config").expect("found");
        assert!(
            body.contains("### Sub") && body.contains(".dotted"),
            "{body}"
        );
        assert!(!body.contains("not in it"), "{body}");
        assert!(markdown_section(DOC, "## Missing").is_none());
    }

    #[test]
    fn tables_become_tagged_paragraphs_with_their_defaults() {
        let page = FilePage {
            name: "demo.toml",
            about: "a demo",
            source: "DOC",
            markdown: markdown_section(DOC, "## Config")
                .expect("found")
                .to_string(),
            see_also: &["demo(1)"],
        };
        let roff = render(&page, "demo 1.0");
        assert!(roff.starts_with(".TH \"DEMO.TOML\" 5"), "{roff}");
        assert!(
            roff.contains(".TP\n\\fBname\\fR\nthe host's name\n.br\nDefault: required\n"),
            "{roff}"
        );
        assert!(roff.contains("see docs\n"), "links keep their text: {roff}");
        assert!(roff.contains(".IP \\(bu 2\na \\fBlist\\fR item"), "{roff}");
        assert!(
            roff.contains("\\&.dotted = 1"),
            "a leading dot is guarded: {roff}"
        );
        assert!(!roff.contains("|---"), "{roff}");
        assert!(roff.contains(".SH \"SEE ALSO\"\ndemo(1)"), "{roff}");
    }
}
