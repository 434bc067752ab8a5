//! The tags Handover reads and writes, and which of a like-instance's tags its
//! clones carry.

/// The fleet a server belongs to: `terminate` refuses any instance without it.
pub const FLEET: &str = "handover:fleet";
/// The revision the rollout that launched a server deploys.
pub const ROLLOUT: &str = "handover:rollout";
/// The part a launched server plays.
pub const ROLE: &str = "handover:role";
/// A deployment input on a launch template version (`array update`), one tag each.
pub const INPUT_PREFIX: &str = "handover:input:";
/// On the Auto Scaling group while it is disabled: the processes `array disable`
/// suspended (and so `array enable` resumes), comma-separated, or `none`.
pub const SUSPENDED: &str = "handover:suspended";
/// Set by EC2 on an instance launched from a launch template.
pub const TEMPLATE_ID: &str = "aws:ec2launchtemplate:id";
/// Likewise, the template version.
pub const TEMPLATE_VERSION: &str = "aws:ec2launchtemplate:version";
/// The console's name for an instance.
pub const NAME: &str = "Name";
/// EC2 accepts at most this many tags on a resource.
pub const MAX_TAGS: usize = 50;
/// ...and values of at most this many characters.
pub const MAX_VALUE: usize = 256;

/// A tag as a pair.
pub type Pair = (String, String);

/// The like-instance's tags that a clone carries: all but AWS's own (`aws:*`,
/// which no one may set), its `Name` (the clone has its own) and ours (set anew).
pub fn copied(tags: &[Pair]) -> Vec<Pair> {
    tags.iter()
        .filter(|(k, _)| !k.starts_with("aws:") && k != NAME && !k.starts_with("handover:"))
        .cloned()
        .collect()
}

/// Handover's tags on a launched server.
pub fn ours(name: &str, fleet: &str, revision: Option<&str>) -> Vec<Pair> {
    let mut tags = vec![
        (NAME.to_owned(), name.to_owned()),
        (FLEET.to_owned(), fleet.to_owned()),
        (ROLE.to_owned(), "app".to_owned()),
    ];
    if let Some(r) = revision {
        tags.push((ROLLOUT.to_owned(), r.to_owned()));
    }
    tags
}

/// `base` with `over` laid on it: a key in both takes `over`'s value.
pub fn merged(base: &[Pair], over: &[Pair]) -> Vec<Pair> {
    let mut out: Vec<Pair> = base
        .iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    out.extend(over.iter().cloned());
    out
}

/// Refuses a tag set EC2 would refuse, before any call is made.
pub fn check(tags: &[Pair]) -> anyhow::Result<()> {
    if tags.len() > MAX_TAGS {
        anyhow::bail!(
            "{} tags where EC2 takes at most {MAX_TAGS}: remove tags from the like-instance or inputs from the plan",
            tags.len()
        );
    }
    if let Some((k, v)) = tags.iter().find(|(_, v)| v.chars().count() > MAX_VALUE) {
        anyhow::bail!(
            "tag {k} would be {} characters where EC2 takes at most {MAX_VALUE}: shorten it",
            v.chars().count()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<Pair> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_clone_keeps_the_owners_tags_and_gets_its_own_name_and_ours() {
        let like = pairs(&[
            ("Name", "web-1"),
            ("team", "shop"),
            ("aws:autoscaling:groupName", "shop-web"),
            ("handover:rollout", "v1"),
            ("cost-center", "42"),
        ]);
        let tags = merged(&copied(&like), &ours("shop-0a1b2c3d", "shop", Some("v2")));
        assert_eq!(
            tags,
            pairs(&[
                ("team", "shop"),
                ("cost-center", "42"),
                ("Name", "shop-0a1b2c3d"),
                ("handover:fleet", "shop"),
                ("handover:role", "app"),
                ("handover:rollout", "v2"),
            ])
        );
        check(&tags).expect("fits");
    }

    #[test]
    fn too_many_or_too_long_tags_are_refused_before_any_call() {
        let many: Vec<Pair> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check(&many).is_err());
        let long = pairs(&[("handover:input:X", &"x".repeat(300))]);
        let err = check(&long).expect_err("long").to_string();
        assert!(err.contains("handover:input:X"), "{err}");
    }
}
