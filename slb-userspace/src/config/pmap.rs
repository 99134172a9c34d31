//! [`ParamMap`]: API parameters held in memory. It is both what an HTTP request's query string
//! becomes (every value a string, list parameters as JSON text, slb-api.md §1.7) and what the
//! exporter produces from the model (typed values), so the API, the store and `slb export` all
//! validate through the same `check_*` functions as the TOML file.

use std::collections::HashSet;

use super::error::{ApiCode, Issue};
use super::params::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PValue {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<ParamMap>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamMap {
    entries: Vec<(String, PValue)>,
    read: HashSet<String>,
}

fn invalid(name: &str, message: String) -> Issue {
    Issue::new(name, ApiCode::InvalidParameter, Some("§1.7"), message)
}

impl ParamMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name`, replacing an earlier value (so a request can overlay stored parameters).
    pub fn set(&mut self, name: &str, value: PValue) {
        match self.entries.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.entries.push((name.to_string(), value)),
        }
    }

    pub fn set_str(&mut self, name: &str, value: impl Into<String>) {
        self.set(name, PValue::Str(value.into()));
    }

    pub fn set_int(&mut self, name: &str, value: i64) {
        self.set(name, PValue::Int(value));
    }

    pub fn remove(&mut self, name: &str) -> Option<PValue> {
        let i = self.entries.iter().position(|(k, _)| k == name)?;
        Some(self.entries.remove(i).1)
    }

    pub fn get(&self, name: &str) -> Option<&PValue> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn entries(&self) -> &[(String, PValue)] {
        &self.entries
    }

    /// Every value of `other` replaces or joins this map's.
    pub fn overlay(&mut self, other: &ParamMap) {
        for (k, v) in &other.entries {
            self.set(k, v.clone());
        }
    }

    fn take(&mut self, name: &str) -> Option<PValue> {
        self.read.insert(name.to_string());
        self.get(name).cloned()
    }

    /// A JSON object from a list parameter (§1.7): numbers and booleans keep their type, nested
    /// lists of objects become lists.
    fn from_json(name: &str, value: &serde_json::Value) -> Result<ParamMap, Issue> {
        let serde_json::Value::Object(obj) = value else {
            return Err(invalid(
                name,
                format!("The specified parameter {name} is not valid: every element must be a JSON object"),
            ));
        };
        let mut map = ParamMap::new();
        for (k, v) in obj {
            let pv = match v {
                serde_json::Value::String(s) => PValue::Str(s.clone()),
                serde_json::Value::Bool(b) => PValue::Bool(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => PValue::Int(i),
                    None => {
                        return Err(invalid(
                            name,
                            format!(
                            "The specified parameter {name} is not valid: {k} is not an integer"
                        ),
                        ))
                    }
                },
                serde_json::Value::Array(items) => PValue::List(
                    items
                        .iter()
                        .map(|item| Self::from_json(name, item))
                        .collect::<Result<_, _>>()?,
                ),
                serde_json::Value::Null | serde_json::Value::Object(_) => {
                    return Err(invalid(
                        name,
                        format!(
                        "The specified parameter {name} is not valid: {k} has an unsupported value"
                    ),
                    ))
                }
            };
            map.set(k, pv);
        }
        Ok(map)
    }

    /// Parses the JSON list text of a list parameter (`BackendServers=[{...}]`).
    pub fn parse_list(name: &str, text: &str) -> Result<Vec<ParamMap>, Issue> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            invalid(
                name,
                format!("The specified parameter {name} is not valid: not a JSON list ({e})"),
            )
        })?;
        let serde_json::Value::Array(items) = value else {
            return Err(invalid(
                name,
                format!("The specified parameter {name} is not valid: not a JSON list"),
            ));
        };
        items.iter().map(|v| Self::from_json(name, v)).collect()
    }
}

impl Params for ParamMap {
    type Object = ParamMap;

    fn string(&mut self, name: &str) -> Result<Option<String>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(PValue::Str(s)) => Ok(Some(s)),
            Some(PValue::Int(i)) => Ok(Some(i.to_string())),
            Some(PValue::Bool(b)) => Ok(Some(b.to_string())),
            Some(PValue::List(_)) => Err(invalid(name, format!("{name} must be a string"))),
        }
    }

    fn integer(&mut self, name: &str) -> Result<Option<i64>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(PValue::Int(i)) => Ok(Some(i)),
            Some(PValue::Str(s)) => s.trim().parse().map(Some).map_err(|_| {
                invalid(
                    name,
                    format!("The specified parameter {name} is not valid: {s:?} is not an integer"),
                )
            }),
            Some(_) => Err(invalid(name, format!("{name} must be an integer"))),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(PValue::Bool(b)) => Ok(Some(b)),
            Some(PValue::Str(s)) => match s.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(invalid(
                    name,
                    format!(
                        "The specified parameter {name} is not valid: {s:?} is not true or false"
                    ),
                )),
            },
            Some(_) => Err(invalid(name, format!("{name} must be true or false"))),
        }
    }

    fn objects(&mut self, name: &str) -> Result<Option<Vec<ParamMap>>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(PValue::List(items)) => Ok(Some(items)),
            Some(PValue::Str(text)) => Self::parse_list(name, &text).map(Some),
            Some(_) => Err(invalid(name, format!("{name} must be a JSON list"))),
        }
    }

    fn skip(&mut self, name: &str) {
        self.read.insert(name.to_string());
    }

    fn unread(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.read.contains(*k))
            .cloned()
            .collect()
    }
}
