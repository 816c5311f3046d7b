//! Request bodies checked against Discord's own OpenAPI schema (the subset
//! in tests/fixtures/discord/openapi-subset.json): a small JSON Schema
//! 2020-12 validator for the keywords that spec uses.
//!
//! Two leniencies, both where Discord itself is lenient and its docs say
//! so: a snowflake (`format: snowflake`, a decimal string in the spec) may
//! be a JSON integer (serenity sends new attachment ids that way), and an
//! integer may be a decimal string (permission bit sets, which Discord's
//! docs write as strings and serenity sends as strings). Properties the
//! spec does not list are allowed, as JSON Schema allows them.

use std::sync::OnceLock;

use serde_json::Value;

pub struct Spec {
    doc: Value,
}

/// The spec, read once per test binary.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/discord/openapi-subset.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Spec {
            doc: serde_json::from_str(&text).unwrap(),
        }
    })
}

impl Spec {
    /// The JSON request body schema of `method` on the spec's `template`.
    pub fn body_schema(&self, template: &str, method: &str) -> &Value {
        &self.doc["paths"][template][method]["requestBody"]["content"]["application/json"]["schema"]
    }

    /// Check `body` as the request body of `method template`; the errors
    /// name where in the body each is.
    pub fn check(&self, template: &str, method: &str, body: &Value) -> Vec<String> {
        let schema = self.body_schema(template, method);
        assert!(!schema.is_null(), "no schema for {method} {template}");
        let mut errors = Vec::new();
        self.validate(schema, body, "", &mut errors);
        errors
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                let s = &self.doc["components"]["schemas"][name];
                assert!(!s.is_null(), "unknown $ref {r}");
                self.resolve(s)
            }
            None => schema,
        }
    }

    fn valid(&self, schema: &Value, v: &Value) -> bool {
        let mut e = Vec::new();
        self.validate(schema, v, "", &mut e);
        e.is_empty()
    }

    fn validate(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(s) = schema.as_object() else { return };
        let mut fail =
            |m: String| errors.push(format!("{}: {m}", if at.is_empty() { "/" } else { at }));
        let snowflake = s.get("format").and_then(Value::as_str) == Some("snowflake");
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(x) => vec![x.as_str()],
                Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let ok = types.iter().any(|t| match *t {
                "null" => v.is_null(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                "number" => v.is_number(),
                "integer" => {
                    v.is_i64()
                        || v.is_u64()
                        || v.as_str()
                            .is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
                }
                "string" => v.is_string() || (snowflake && (v.is_u64() || v.is_i64())),
                _ => false,
            });
            if !ok {
                fail(format!("{v} is not of type {t}"));
                return;
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                fail(format!("{v} is not {c}"));
            }
        }
        if let Some(Value::Array(options)) = s.get("enum") {
            if !options.contains(v) {
                fail(format!(
                    "{v} is not one of {}",
                    Value::Array(options.clone())
                ));
            }
        }
        // Sizes: a string's characters, an array's items, an object's properties.
        let size = match v {
            Value::String(text) => Some((text.chars().count(), "characters", "Length")),
            Value::Array(items) => Some((items.len(), "items", "Items")),
            Value::Object(map) => Some((map.len(), "properties", "Properties")),
            _ => None,
        };
        if let Some((n, what, keyword)) = size {
            let n = n as u64;
            let bound = |k: &str| s.get(&format!("{k}{keyword}")).and_then(Value::as_u64);
            if let Some(min) = bound("min").filter(|&min| n < min) {
                fail(format!("{n} {what}, fewer than {min}"));
            }
            if let Some(max) = bound("max").filter(|&max| n > max) {
                fail(format!("{n} {what}, more than {max}"));
            }
        }
        if let Value::String(text) = v {
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                if !regex::Regex::new(p).unwrap().is_match(text) {
                    fail(format!("{text:?} does not match {p}"));
                }
            }
        }
        let num = v
            .as_f64()
            .or_else(|| v.as_str().and_then(|x| x.parse::<f64>().ok()));
        if let (Some(x), true) = (num, v.is_number() || !snowflake) {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    fail(format!("{x} is below the minimum {min}"));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    fail(format!("{x} is above the maximum {max}"));
                }
            }
        }
        if let Value::Array(items) = v {
            if s.get("uniqueItems") == Some(&Value::Bool(true)) {
                for (i, a) in items.iter().enumerate() {
                    if items[..i].contains(a) {
                        fail(format!("item {i} is a duplicate"));
                    }
                }
            }
        }
        if let Value::Object(map) = v {
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        fail(format!("the required property {r} is missing"));
                    }
                }
            }
        }
        // Keywords that descend.
        if let Value::Array(items) = v {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.validate(item, x, &format!("{at}/{i}"), errors);
                }
            }
        }
        if let Value::Object(map) = v {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in map {
                let path = format!("{at}/{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => self.validate(p, x, &path, errors),
                    (None, Some(Value::Bool(false))) => {
                        errors.push(format!("{path}: not allowed here"))
                    }
                    (None, Some(extra)) if extra.is_object() => {
                        self.validate(extra, x, &path, errors)
                    }
                    _ => {}
                }
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for sub in all {
                self.validate(sub, v, at, errors);
            }
        }
        if let Some(Value::Array(any)) = s.get("anyOf") {
            if !any.iter().any(|sub| self.valid(sub, v)) {
                errors.push(format!(
                    "{at}: matches none of {} alternatives{}",
                    any.len(),
                    self.closest(any, v)
                ));
            }
        }
        if let Some(Value::Array(one)) = s.get("oneOf") {
            let n = one.iter().filter(|sub| self.valid(sub, v)).count();
            if n != 1 {
                errors.push(format!(
                    "{at}: matches {n} of {} alternatives, not exactly one{}",
                    one.len(),
                    if n == 0 {
                        self.closest(one, v)
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }

    /// The errors of the alternative that came closest, for the message.
    fn closest(&self, alternatives: &[Value], v: &Value) -> String {
        alternatives
            .iter()
            .map(|sub| {
                let mut e = Vec::new();
                self.validate(sub, v, "", &mut e);
                e
            })
            .min_by_key(|e| e.len())
            .map(|e| format!(" (closest: {})", e.join("; ")))
            .unwrap_or_default()
    }
}
