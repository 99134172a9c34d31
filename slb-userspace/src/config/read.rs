//! `Read`: accumulates issues while pulling typed values out of a [`Params`] bag, so one pass
//! reports every problem of an object instead of stopping at the first.

use super::error::{ApiCode, Issue};
use super::params::Params;

pub(crate) struct Read<'p, P: Params> {
    p: &'p mut P,
    pub(crate) issues: Vec<Issue>,
}

impl<'p, P: Params> Read<'p, P> {
    pub(crate) fn new(p: &'p mut P) -> Self {
        Read {
            p,
            issues: Vec::new(),
        }
    }

    pub(crate) fn issue(
        &mut self,
        path: impl Into<String>,
        code: ApiCode,
        rule: &'static str,
        message: impl Into<String>,
    ) {
        self.issues
            .push(Issue::new(path, code, Some(rule), message));
    }

    pub(crate) fn extend(&mut self, prefix: &str, issues: Vec<Issue>) {
        self.issues
            .extend(issues.into_iter().map(|i| i.under(prefix)));
    }

    /// True when `name` already has an issue; used so a malformed value is not also reported as
    /// missing.
    fn has_issue(&self, name: &str) -> bool {
        self.issues.iter().any(|i| i.path == name)
    }

    /// B1.4: a conditionally required parameter is absent.
    pub(crate) fn missing(&mut self, name: &str, rule: &'static str) {
        if !self.has_issue(name) {
            self.issue(
                name,
                ApiCode::MissingParameter,
                rule,
                format!(
                    "The input parameter {name} that is mandatory for processing this request is not supplied."
                ),
            );
        }
    }

    fn got<T>(&mut self, r: Result<Option<T>, Issue>) -> Option<T> {
        r.unwrap_or_else(|issue| {
            self.issues.push(issue);
            None
        })
    }

    pub(crate) fn string(&mut self, name: &str) -> Option<String> {
        let r = self.p.string(name);
        self.got(r)
    }

    pub(crate) fn int(&mut self, name: &str) -> Option<i64> {
        let r = self.p.integer(name);
        self.got(r)
    }

    pub(crate) fn boolean(&mut self, name: &str) -> Option<bool> {
        let r = self.p.boolean(name);
        self.got(r)
    }

    pub(crate) fn objects(&mut self, name: &str) -> Option<Vec<P::Object>> {
        let r = self.p.objects(name);
        self.got(r)
    }

    pub(crate) fn skip(&mut self, names: &[&str]) {
        for name in names {
            self.p.skip(name);
        }
    }

    /// A required identifier; §1.7: surrounding whitespace is trimmed, empty counts as missing.
    pub(crate) fn required_id(&mut self, name: &str, rule: &'static str) -> Option<String> {
        match self.string(name).map(|s| s.trim().to_string()) {
            Some(s) if !s.is_empty() => Some(s),
            _ => {
                self.missing(name, rule);
                None
            }
        }
    }

    /// One of a fixed set of API strings; `None` if absent or invalid (then an issue is recorded).
    pub(crate) fn choice<T: Copy>(
        &mut self,
        name: &str,
        options: &[(&str, T)],
        rule: &'static str,
    ) -> Option<T> {
        let value = self.string(name)?;
        match options.iter().find(|(s, _)| *s == value) {
            Some((_, t)) => Some(*t),
            None => {
                let allowed: Vec<&str> = options.iter().map(|(s, _)| *s).collect();
                self.issue(
                    name,
                    ApiCode::InvalidParameter,
                    rule,
                    format!(
                        "The specified parameter {name} is not valid: {value:?} is not one of {}",
                        allowed.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// B1.1: `on`/`off` switch; `None` if absent or invalid.
    pub(crate) fn switch_opt(&mut self, name: &str) -> Option<bool> {
        self.choice(name, &[("on", true), ("off", false)], "B1.1")
    }

    pub(crate) fn switch(&mut self, name: &str, default: bool) -> bool {
        self.switch_opt(name).unwrap_or(default)
    }

    /// B1.2: an integer in `lo..=hi`, rejected (not clamped) outside; `None` if absent or invalid.
    pub(crate) fn range(
        &mut self,
        name: &str,
        lo: i64,
        hi: i64,
        code: ApiCode,
        rule: &'static str,
    ) -> Option<i64> {
        let v = self.int(name)?;
        if (lo..=hi).contains(&v) {
            Some(v)
        } else {
            self.issue(
                name,
                code,
                rule,
                format!("The specified parameter {name} is not valid: {v} is outside {lo}..={hi}"),
            );
            None
        }
    }

    /// B3.8: a port 1..=65535.
    pub(crate) fn port(&mut self, name: &str) -> Option<u16> {
        self.range(name, 1, 65535, ApiCode::InvalidParameter, "B3.8")
            .and_then(|v| u16::try_from(v).ok())
    }

    /// Reports parameters nobody read. `known` lists parameters that exist in this kind of object
    /// but do not apply here (e.g. `Gzip` on a TCP listener), which gets a more helpful message.
    pub(crate) fn finish(mut self, known: &[&str], context: &str) -> Vec<Issue> {
        for name in self.p.unread() {
            let message = if known.contains(&name.as_str()) {
                format!("{name} does not apply to {context}")
            } else {
                format!("unknown parameter {name} in {context}")
            };
            self.issues.push(Issue::new(
                name,
                ApiCode::UnsupportedParameter,
                None,
                message,
            ));
        }
        self.issues
    }
}
