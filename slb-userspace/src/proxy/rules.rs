//! Which forwarding rule a request follows (§11).
use crate::config::Rule;

use super::domain;

/// The rule whose group serves a request to `host` (the Host header or HTTP/2 authority, port
/// and all) for `path` (the request path, without the query: `Uri::path`); `None` sends the
/// request to the listener's own group (B11.4).
///
/// B11.5: a rule matches when its domain matches the host (a rule without a domain matches any
/// host, below every wildcard) and its url is a prefix of the path (a rule without a url
/// matches every path). The best domain match wins, then the longest url, then the first rule.
pub fn select<'a>(rules: &'a [Rule], host: Option<&str>, path: &str) -> Option<&'a Rule> {
    let host = host.map(without_port);
    let mut found: Option<((usize, usize), &Rule)> = None;
    for rule in rules {
        // Wildcards rank by their label count, at least 1, so 0 sits below them all.
        let domain_rank = match (&rule.domain, host) {
            (None, _) => 0,
            (Some(pattern), Some(host)) => match domain::rank(pattern, host) {
                Some(r) => r,
                None => continue,
            },
            (Some(_), None) => continue,
        };
        let url = rule.url.as_deref().unwrap_or("");
        if !path.starts_with(url) {
            continue;
        }
        let key = (domain_rank, url.len());
        if found.is_none_or(|(best, _)| key > best) {
            found = Some((key, rule));
        }
    }
    found.map(|(_, rule)| rule)
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `::1`; a bare IPv6 address stays whole.
pub fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, domain: Option<&str>, url: Option<&str>) -> Rule {
        Rule {
            rule_id: id.to_string(),
            name: id.to_string(),
            domain: domain.map(str::to_string),
            url: url.map(str::to_string),
            vserver_group_id: format!("rsp-{id}"),
        }
    }

    fn pick<'a>(rules: &'a [Rule], host: Option<&str>, path: &str) -> Option<&'a str> {
        select(rules, host, path).map(|r| r.rule_id.as_str())
    }

    /// B11.5 (1): exact domain > narrow wildcard > broad wildcard > no domain, whatever the
    /// order the rules were created in and however long their urls are.
    #[test]
    fn best_domain_match_wins_before_url_length() {
        let rules = [
            rule("any", None, Some("/very/long/prefix")),
            rule("broad", Some("*.example.com"), Some("/very/long")),
            rule("narrow", Some("*.market.example.com"), Some("/very")),
            rule("exact", Some("www.market.example.com"), None),
        ];
        let path = "/very/long/prefix/x";
        assert_eq!(
            pick(&rules, Some("www.market.example.com"), path),
            Some("exact")
        );
        assert_eq!(
            pick(&rules, Some("info.market.example.com"), path),
            Some("narrow")
        );
        assert_eq!(pick(&rules, Some("a.example.com"), path), Some("broad"));
        assert_eq!(pick(&rules, Some("other.org"), path), Some("any"));
        assert_eq!(pick(&rules, None, path), Some("any"));
    }

    /// B11.5 (2): among rules of the same domain the longest matching url wins; among equals
    /// the first rule.
    #[test]
    fn longest_url_prefix_wins_then_first_rule() {
        let rules = [
            rule("root", Some("example.com"), Some("/")),
            rule("img", Some("example.com"), Some("/img")),
            rule("img-big", Some("example.com"), Some("/img/big")),
            rule("img-again", Some("EXAMPLE.com"), Some("/img")),
            rule("domain-only", Some("example.com"), None),
        ];
        let host = Some("example.com");
        assert_eq!(pick(&rules, host, "/img/big/1.png"), Some("img-big"));
        assert_eq!(pick(&rules, host, "/img/small/1.png"), Some("img"));
        assert_eq!(pick(&rules, host, "/imgs"), Some("img"));
        assert_eq!(pick(&rules, host, "/index.html"), Some("root"));
        assert_eq!(pick(&rules, host, ""), Some("domain-only"));
    }

    /// B11.5 (3): the url is matched as a prefix of the path, case-sensitively; a url that
    /// only a query would complete does not match, since the path carries no query.
    #[test]
    fn url_is_a_case_sensitive_path_prefix() {
        let rules = [rule("api", None, Some("/api/v1"))];
        assert_eq!(
            pick(&rules, Some("example.com"), "/api/v1/users"),
            Some("api")
        );
        assert_eq!(pick(&rules, Some("example.com"), "/API/v1/users"), None);
        assert_eq!(pick(&rules, Some("example.com"), "/api"), None);
        let with_query = [rule("q", None, Some("/search?q"))];
        assert_eq!(pick(&with_query, Some("example.com"), "/search"), None);
    }

    /// B11.5 (3): the host is compared without its port and without regard to case, for names,
    /// bracketed IPv6 with or without a port, and bare IPv6.
    #[test]
    fn host_ignores_port_and_case() {
        let rules = [
            rule("name", Some("www.example.com"), None),
            rule("v4", Some("192.0.2.1"), None),
            rule("v6", Some("::1"), None),
        ];
        assert_eq!(
            pick(&rules, Some("WWW.Example.COM:8080"), "/"),
            Some("name")
        );
        assert_eq!(pick(&rules, Some("www.example.com."), "/"), Some("name"));
        assert_eq!(pick(&rules, Some("192.0.2.1:80"), "/"), Some("v4"));
        assert_eq!(pick(&rules, Some("[::1]:80"), "/"), Some("v6"));
        assert_eq!(pick(&rules, Some("[::1]"), "/"), Some("v6"));
        assert_eq!(pick(&rules, Some("::1"), "/"), Some("v6"));
        assert_eq!(without_port("[::1"), "::1");
    }

    /// B11.4: nothing matches, so the listener's own group serves the request.
    #[test]
    fn no_matching_rule_means_the_listener_group() {
        let rules = [
            rule("www", Some("www.example.com"), Some("/app")),
            rule("wild", Some("*.example.com"), Some("/static")),
        ];
        assert_eq!(pick(&rules, Some("www.example.com"), "/other"), None);
        assert_eq!(
            pick(&rules, Some("www.example.com"), "/static"),
            Some("wild")
        );
        assert_eq!(pick(&rules, Some("example.com"), "/app"), None);
        assert_eq!(pick(&rules, Some("www.example.org"), "/app"), None);
        assert_eq!(pick(&rules, None, "/app"), None);
        assert_eq!(pick(&[], Some("www.example.com"), "/app"), None);
    }
}
