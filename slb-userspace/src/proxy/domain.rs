//! Host names matched the way SNI picks a certificate (B10.16) and a forwarding rule picks a
//! group (B11.5): an exact name beats every wildcard, a narrower wildcard a broader one.

/// How well `pattern` (`www.example.com` or `*.example.com`) matches `host`, higher is better;
/// `None` when it does not match. Case is ignored, as is a trailing dot on the host. A wildcard
/// stands for one or more leading labels (B10.16 DECISION), and ranks by its own label count.
pub fn rank(pattern: &str, host: &str) -> Option<usize> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return pattern.eq_ignore_ascii_case(host).then_some(usize::MAX);
    };
    let dot = host.len().checked_sub(suffix.len() + 1)?;
    let matches = dot > 0
        && host.as_bytes()[dot] == b'.'
        && host
            .get(dot + 1..)
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix));
    matches.then(|| suffix.split('.').count())
}

/// The item whose pattern matches `host` best; among equals the first one (B10.18: of
/// several equally good wildcards only the first is used).
pub fn best<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    pattern: impl Fn(&T) -> &str,
    host: &str,
) -> Option<&'a T> {
    let mut found: Option<(usize, &T)> = None;
    for item in items {
        if let Some(r) = rank(pattern(item), host) {
            if found.is_none_or(|(best, _)| r > best) {
                found = Some((r, item));
            }
        }
    }
    found.map(|(_, item)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B10.16: the three examples of the SNI chapter, plus case, trailing dots and near misses.
    #[test]
    fn exact_beats_narrow_beats_broad_wildcard() {
        let patterns = ["*.example.com", "*.market.example.com", "www.example.com"];
        let pick = |host| best(&patterns, |p| p, host).copied();
        assert_eq!(pick("www.example.com"), Some("www.example.com"));
        assert_eq!(pick("WWW.Example.COM."), Some("www.example.com"));
        assert_eq!(pick("market.example.com"), Some("*.example.com"));
        assert_eq!(
            pick("info.market.example.com"),
            Some("*.market.example.com")
        );
        assert_eq!(pick("a.b.c.example.com"), Some("*.example.com"));
        assert_eq!(pick("example.com"), None);
        assert_eq!(pick("badexample.com"), None);
        assert_eq!(pick(".example.com"), None);
        assert_eq!(pick("other.org"), None);
    }

    #[test]
    fn first_of_equal_wildcards_wins() {
        let patterns = [("*.example.com", 1), ("*.EXAMPLE.com", 2)];
        assert_eq!(
            best(&patterns, |p| p.0, "a.example.com").map(|p| p.1),
            Some(1)
        );
    }

    #[test]
    fn non_ascii_hosts_do_not_panic() {
        assert_eq!(rank("*.example.com", "é.example.com"), Some(2));
        assert_eq!(rank("*.aé", "xaé"), None);
        assert_eq!(rank("*.a", "ééé"), None);
    }
}
