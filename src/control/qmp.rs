//! QMP wire format.

use serde_json::{json, Map, Value};

/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// A QMP error: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    pub fn not_found(cmd: &str) -> Self {
        QmpError {
            class: "CommandNotFound",
            desc: format!("The command {cmd} has not been found"),
        }
    }
}

/// Any error as a `GenericError` whose description is the error and its causes.
impl<E: std::error::Error + 'static> From<E> for QmpError {
    fn from(e: E) -> Self {
        QmpError::generic(crate::ErrorChain(&e).to_string())
    }
}

pub fn greeting() -> Value {
    json!({"QMP": {
        "version": {
            "qemu": {"major": 0, "minor": 1, "micro": 0},
            "package": concat!("sriov-emu ", env!("CARGO_PKG_VERSION")),
        },
        "capabilities": [],
    }})
}

pub fn ret(value: Value, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

pub fn error(e: &QmpError, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), json!({"class": e.class, "desc": e.desc}));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
}

/// Parses one request line. On error, returns the error and the id if one could be read.
pub fn parse_request(line: &str) -> Result<Request, (QmpError, Option<Value>)> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| (QmpError::generic(format!("JSON parse error: {e}")), None))?;
    let Value::Object(mut obj) = v else {
        return Err((QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = obj.remove("id");
    let execute = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err((
                QmpError::generic("QMP input member 'execute' must be a string"),
                id,
            ))
        }
        None => return Err((QmpError::generic("QMP input lacks member 'execute'"), id)),
    };
    let arguments = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err((
                QmpError::generic("QMP input member 'arguments' must be an object"),
                id,
            ))
        }
    };
    if let Some(k) = obj.keys().next() {
        return Err((
            QmpError::generic(format!("QMP input member '{k}' is unexpected")),
            id,
        ));
    }
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

/// Typed access to a command's arguments; every argument must be consumed (an unknown one is
/// an error, as in QEMU).
pub struct Args {
    map: Map<String, Value>,
}

impl Args {
    pub fn new(map: Map<String, Value>) -> Self {
        Args { map }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    pub fn opt_int(&mut self, name: &str) -> Result<Option<i64>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' expects an integer"))),
        }
    }

    pub fn int(&mut self, name: &str) -> Result<i64, QmpError> {
        self.opt_int(name)?
            .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' is missing")))
    }

    /// A non-negative integer that fits u32 (VF indices, counts).
    pub fn u32(&mut self, name: &str) -> Result<u32, QmpError> {
        let v = self.int(name)?;
        u32::try_from(v)
            .map_err(|_| QmpError::generic(format!("Parameter '{name}' is out of range: {v}")))
    }

    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' expects a boolean"))),
        }
    }

    pub fn opt_str(&mut self, name: &str) -> Result<Option<String>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(QmpError::generic(format!(
                "Parameter '{name}' expects a string"
            ))),
        }
    }

    pub fn str(&mut self, name: &str) -> Result<String, QmpError> {
        self.opt_str(name)?
            .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' is missing")))
    }

    pub fn opt_value(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    /// Fails on any argument not taken.
    pub fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().next() {
            Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_ids_and_errors_keep_them() {
        let r = parse_request(r#"{"execute":"query-vfs","arguments":{"vf":1},"id":"x"}"#).unwrap();
        assert_eq!(
            (r.execute.as_str(), r.arguments["vf"].as_i64(), r.id),
            ("query-vfs", Some(1), Some(json!("x")))
        );
        let (e, id) = parse_request(r#"{"arguments":{},"id":7}"#).unwrap_err();
        assert!(e.desc.contains("lacks member 'execute'"));
        assert_eq!(id, Some(json!(7)));
        assert!(parse_request("{nope")
            .unwrap_err()
            .0
            .desc
            .starts_with("JSON parse error"));
        assert!(parse_request("[1]").is_err());
        assert!(parse_request(r#"{"execute":"x","bogus":1}"#).is_err());
    }

    #[test]
    fn args_are_typed_and_unknown_ones_refused() {
        let mut a = Args::new(
            json!({"vf": 2, "mac": "02:00:00:00:00:09", "x": true})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(a.u32("vf").unwrap(), 2);
        assert!(a.opt_int("mac").is_err());
        assert!(a.finish().unwrap_err().desc.contains("'x' is unexpected"));
        let mut b = Args::new(json!({"vf": -1}).as_object().unwrap().clone());
        assert!(b.u32("vf").unwrap_err().desc.contains("out of range"));
    }
}
