//! Parameter sources: the checks read named parameters through [`Params`], so the same checks serve
//! the TOML file and (later) the HTTP API's query strings. The TOML source also maps a field path
//! back to the place in the file.

use std::collections::HashSet;
use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

use super::error::{ApiCode, Issue};

/// A bag of named API parameters as they arrive, before validation.
///
/// Errors returned here are format errors (a value of the wrong type); paths in them are the bare
/// parameter name (or `Name[i]` for list elements) relative to this bag.
pub trait Params {
    /// The element type of list-valued parameters such as `BackendServers`.
    type Object: Params;

    fn string(&mut self, name: &str) -> Result<Option<String>, Issue>;
    fn integer(&mut self, name: &str) -> Result<Option<i64>, Issue>;
    fn boolean(&mut self, name: &str) -> Result<Option<bool>, Issue>;
    fn objects(&mut self, name: &str) -> Result<Option<Vec<Self::Object>>, Issue>;
    /// Marks a parameter as consumed without looking at it (B1.3: accepted and ignored).
    fn skip(&mut self, name: &str);
    /// Names of parameters present but never read or skipped, in source order.
    fn unread(&self) -> Vec<String>;
}

/// Parameters held by a TOML table or inline table of an [`toml_edit::ImDocument`].
pub(crate) struct TomlParams<'d> {
    table: &'d dyn TableLike,
    read: HashSet<String>,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a datetime",
        Item::Value(Value::Array(_)) | Item::ArrayOfTables(_) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
    }
}

fn wrong_type(path: &str, expected: &str, item: &Item) -> Issue {
    Issue::new(
        path,
        ApiCode::InvalidParameter,
        None,
        format!("expected {expected}, found {}", type_name(item)),
    )
}

impl<'d> TomlParams<'d> {
    pub(crate) fn new(table: &'d dyn TableLike) -> Self {
        TomlParams {
            table,
            read: HashSet::new(),
        }
    }

    fn take(&mut self, name: &str) -> Option<&'d Item> {
        self.read.insert(name.to_string());
        self.table.get(name)
    }

    /// A sub-table such as `[Agent]`.
    pub(crate) fn table(&mut self, name: &str) -> Result<Option<TomlParams<'d>>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(item) => match item.as_table_like() {
                Some(t) => Ok(Some(TomlParams::new(t))),
                None => Err(wrong_type(name, "a table", item)),
            },
        }
    }

    /// An array of strings such as `Interfaces`.
    pub(crate) fn string_list(&mut self, name: &str) -> Result<Option<Vec<String>>, Issue> {
        let Some(item) = self.take(name) else {
            return Ok(None);
        };
        let Some(array) = item.as_array() else {
            return Err(wrong_type(name, "an array of strings", item));
        };
        array
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    wrong_type(&format!("{name}[{i}]"), "a string", &Item::Value(v.clone()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl<'d> Params for TomlParams<'d> {
    type Object = TomlParams<'d>;

    fn string(&mut self, name: &str) -> Result<Option<String>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(Item::Value(Value::String(s))) => Ok(Some(s.value().clone())),
            Some(item) => Err(wrong_type(name, "a string", item)),
        }
    }

    fn integer(&mut self, name: &str) -> Result<Option<i64>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(Item::Value(Value::Integer(i))) => Ok(Some(*i.value())),
            Some(item) => Err(wrong_type(name, "an integer", item)),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, Issue> {
        match self.take(name) {
            None => Ok(None),
            Some(Item::Value(Value::Boolean(b))) => Ok(Some(*b.value())),
            Some(item) => Err(wrong_type(name, "a boolean", item)),
        }
    }

    fn objects(&mut self, name: &str) -> Result<Option<Vec<TomlParams<'d>>>, Issue> {
        match self.take(name) {
            None => Ok(None),
            // `[[X]]` sections.
            Some(Item::ArrayOfTables(tables)) => Ok(Some(
                tables
                    .iter()
                    .map(|t| TomlParams::new(t as &dyn TableLike))
                    .collect(),
            )),
            // `X = [ { .. }, { .. } ]`.
            Some(Item::Value(Value::Array(array))) => array
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::InlineTable(t) => Ok(TomlParams::new(t as &dyn TableLike)),
                    other => Err(wrong_type(
                        &format!("{name}[{i}]"),
                        "a table",
                        &Item::Value(other.clone()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(item) => Err(wrong_type(name, "an array of tables", item)),
        }
    }

    fn skip(&mut self, name: &str) {
        self.read.insert(name.to_string());
    }

    fn unread(&self) -> Vec<String> {
        self.table
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.read.contains(*k))
            .map(str::to_string)
            .collect()
    }
}

/// One step of a field path: `Listeners[2]` is `("Listeners", Some(2))`.
fn segments(path: &str) -> impl Iterator<Item = (&str, Option<usize>)> {
    path.split('.').filter(|s| !s.is_empty()).map(|seg| {
        match seg.strip_suffix(']').and_then(|s| s.split_once('[')) {
            Some((name, index)) => (name, index.parse().ok()),
            None => (seg, None),
        }
    })
}

/// Byte range in the file of the deepest element of `path` that exists (a missing parameter
/// resolves to its enclosing table).
pub(crate) fn span_of(root: &dyn TableLike, path: &str) -> Option<Range<usize>> {
    let mut table = Some(root);
    let mut best = None;
    for (name, index) in segments(path) {
        let Some((key, child)) = table.and_then(|t| t.get_key_value(name)) else {
            break;
        };
        best = child.span().or_else(|| key.span()).or(best);
        table = child.as_table_like();
        if let Some(i) = index {
            table = match child {
                Item::ArrayOfTables(tables) => tables.get(i).map(|t| {
                    best = t.span().or(best.clone());
                    t as &dyn TableLike
                }),
                Item::Value(Value::Array(array)) => array.get(i).and_then(|v| {
                    best = v.span().or(best.clone());
                    v.as_inline_table().map(|t| t as &dyn TableLike)
                }),
                _ => None,
            };
        }
    }
    best
}
