//! Templates: strings with `{{…}}` references to the run's arguments,
//! earlier steps' results, the run itself and resume URLs.
//!
//! A string that is exactly one reference takes the referenced JSON value
//! (of any type); any other string interpolates each value as text (a
//! string as itself, anything else as compact JSON). There is no escape for
//! a literal `{{`: no field of a definition needs one.
//!
//! Rendering is pure: it reads a [`Scope`] whose resume URLs the
//! interpreter minted (a journaled step) beforehand, in the order
//! [`Template::resume_urls`] lists them, so replay mints them identically.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

/// What a reference starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `args.…`: the run's arguments.
    Args,
    /// `steps.<id>.…`: the result of a step that ran before.
    Steps,
    /// `run.id`, `run.name`, `run.version`.
    Run,
    /// `resume_url.<wait step id>`: a single-use URL that delivers that wait
    /// step's event.
    ResumeUrl,
}

impl Root {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "args" => Self::Args,
            "steps" => Self::Steps,
            "run" => Self::Run,
            "resume_url" => Self::ResumeUrl,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Args => "args",
            Self::Steps => "steps",
            Self::Run => "run",
            Self::ResumeUrl => "resume_url",
        }
    }
}

/// One `{{root.a.b}}` reference: `path` is what follows the root (for
/// `steps`, the step id first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub root: Root,
    pub path: Vec<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root.as_str())?;
        for segment in &self.path {
            write!(f, ".{segment}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parses a bare path such as `steps.decide.event.approved`.
    pub fn parse(path: &str) -> Result<Self, TemplateError> {
        let path = path.trim();
        let mut segments = path.split('.');
        let root = segments.next().unwrap_or_default();
        let root = Root::parse(root).ok_or_else(|| {
            TemplateError(format!(
                "`{path}` must start with `args`, `steps`, `run` or `resume_url`"
            ))
        })?;
        let path: Vec<String> = segments.map(str::to_owned).collect();
        if let Some(bad) = path.iter().find(|s| !is_segment(s)) {
            return Err(TemplateError(format!(
                "`{}` has an invalid segment {bad:?} (segments are letters, digits, `_` and `-`)",
                path_text(root, &path)
            )));
        }
        Ok(Self { root, path })
    }
}

fn path_text(root: Root, path: &[String]) -> String {
    Reference {
        root,
        path: path.to_vec(),
    }
    .to_string()
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Reference),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError(format!("unclosed `{{{{` in {source:?}")))?;
            parts.push(Part::Ref(Reference::parse(&after[..end])?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The reference, when the template is exactly one.
    pub fn whole(&self) -> Option<&Reference> {
        match self.parts.as_slice() {
            [Part::Ref(reference)] => Some(reference),
            _ => None,
        }
    }

    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Text(_) => None,
        })
    }

    /// The text before the first reference (all of it when there is none).
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(text)) => text,
            _ => "",
        }
    }

    /// The wait steps whose resume URL the template uses, in order.
    pub fn resume_urls(&self) -> impl Iterator<Item = &str> {
        self.references()
            .filter(|r| r.root == Root::ResumeUrl)
            .filter_map(|r| r.path.first().map(String::as_str))
    }

    /// Renders as a JSON value (a lone reference keeps its type).
    pub fn render(&self, scope: &Scope<'_>) -> Result<Value, RenderError> {
        match self.whole() {
            Some(reference) => scope.lookup(reference),
            None => self.render_text(scope).map(Value::String),
        }
    }

    /// Renders as text.
    pub fn render_text(&self, scope: &Scope<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Ref(reference) => out.push_str(&as_text(&scope.lookup(reference)?)),
            }
        }
        Ok(out)
    }
}

/// A value as interpolated into text.
pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every template string inside a JSON value (object keys are literal),
/// with its path below the value, in a fixed order.
pub fn strings_in<'v>(value: &'v Value, path: &str, out: &mut Vec<(String, &'v str)>) {
    match value {
        Value::String(s) => out.push((path.to_owned(), s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                strings_in(&map[key], &format!("{path}.{key}"), out);
            }
        }
        _ => {}
    }
}

/// Renders every template string inside a JSON value.
pub fn render_json(value: &Value, scope: &Scope<'_>) -> Result<Value, RenderError> {
    Ok(match value {
        Value::String(s) => Template::parse(s)
            .map_err(|e| RenderError(e.0))?
            .render(scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_json(item, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, scope)?)))
                .collect::<Result<_, RenderError>>()?,
        ),
        other => other.clone(),
    })
}

/// A reference that has no value in this run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// What references read.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub args: &'a Value,
    /// Each step's latest result, by id.
    pub steps: &'a HashMap<String, Value>,
    /// `{id, name, version}`.
    pub run: &'a Value,
    /// Minted resume URLs, by wait step id.
    pub resume_urls: &'a HashMap<String, String>,
}

impl Scope<'_> {
    /// The referenced value; an error names what is missing.
    pub fn lookup(&self, reference: &Reference) -> Result<Value, RenderError> {
        let (base, rest, base_name) = match reference.root {
            Root::Args => (
                Some(self.args),
                reference.path.as_slice(),
                "args".to_owned(),
            ),
            Root::Run => (Some(self.run), reference.path.as_slice(), "run".to_owned()),
            Root::Steps => {
                let Some((id, rest)) = reference.path.split_first() else {
                    return Err(RenderError("`steps` needs a step id".into()));
                };
                let Some(result) = self.steps.get(id) else {
                    return Err(RenderError(format!(
                        "`{reference}`: step {id:?} has not run in this run"
                    )));
                };
                (Some(result), rest, format!("steps.{id}"))
            }
            Root::ResumeUrl => {
                let id = reference
                    .path
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default();
                return self
                    .resume_urls
                    .get(id)
                    .map(|url| Value::String(url.clone()))
                    .ok_or_else(|| RenderError(format!("`{reference}` was not minted")));
            }
        };
        let mut current = base;
        let mut at = base_name;
        for segment in rest {
            current = current.and_then(|v| child(v, segment));
            if current.is_none() {
                return Err(RenderError(format!(
                    "`{reference}`: `{at}` has no `{segment}`"
                )));
            }
            at.push('.');
            at.push_str(segment);
        }
        Ok(current.cloned().unwrap_or(Value::Null))
    }
}

fn child<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope_parts() -> (
        Value,
        HashMap<String, Value>,
        Value,
        HashMap<String, String>,
    ) {
        let args = json!({"amount": 42, "order": {"id": "A-1"}, "tags": ["x", "y"]});
        let steps = HashMap::from([(
            "ask".to_owned(),
            json!({"status": 200, "body": {"ok": true, "ticket": "T-9"}}),
        )]);
        let run = json!({"id": "run-1", "name": "refund", "version": "abc"});
        let urls = HashMap::from([("decision".to_owned(), "https://t/x?sig=1".to_owned())]);
        (args, steps, run, urls)
    }

    #[test]
    fn a_lone_reference_keeps_its_type_and_text_interpolates() {
        let (args, steps, run, urls) = scope_parts();
        let scope = Scope {
            args: &args,
            steps: &steps,
            run: &run,
            resume_urls: &urls,
        };
        let render = |s: &str| {
            Template::parse(s).and_then(|t| t.render(&scope).map_err(|e| TemplateError(e.0)))
        };
        assert_eq!(render("{{args.amount}}"), Ok(json!(42)));
        assert_eq!(render("{{ args.order }}"), Ok(json!({"id": "A-1"})));
        assert_eq!(render("{{steps.ask.body.ok}}"), Ok(json!(true)));
        assert_eq!(render("{{args.tags.1}}"), Ok(json!("y")));
        assert_eq!(render("{{args}}"), Ok(args.clone()));
        assert_eq!(
            render("refund {{args.amount}} for {{args.order.id}} ({{steps.ask.body.ok}})"),
            Ok(json!("refund 42 for A-1 (true)"))
        );
        assert_eq!(render("{{args.order}}!"), Ok(json!("{\"id\":\"A-1\"}!")));
        assert_eq!(render("run {{run.id}}"), Ok(json!("run run-1")));
        assert_eq!(
            render("{{resume_url.decision}}"),
            Ok(json!("https://t/x?sig=1"))
        );
        assert_eq!(render("no references"), Ok(json!("no references")));
        assert_eq!(render(""), Ok(json!("")));
    }

    #[test]
    fn a_missing_value_is_an_error_naming_it() {
        let (args, steps, run, urls) = scope_parts();
        let scope = Scope {
            args: &args,
            steps: &steps,
            run: &run,
            resume_urls: &urls,
        };
        let error = |s: &str| Template::parse(s).ok().and_then(|t| t.render(&scope).err());
        assert_eq!(
            error("{{args.order.nope}}"),
            Some(RenderError(
                "`args.order.nope`: `args.order` has no `nope`".into()
            ))
        );
        assert_eq!(
            error("x {{steps.later.body}}"),
            Some(RenderError(
                "`steps.later.body`: step \"later\" has not run in this run".into()
            ))
        );
        assert!(error("{{args.tags.7}}").is_some());
        assert!(error("{{resume_url.other}}").is_some());
    }

    #[test]
    fn render_json_walks_objects_and_arrays() {
        let (args, steps, run, urls) = scope_parts();
        let scope = Scope {
            args: &args,
            steps: &steps,
            run: &run,
            resume_urls: &urls,
        };
        let body = json!({
            "amount": "{{args.amount}}",
            "items": ["{{args.order.id}}", 3, null],
            "note": "ticket {{steps.ask.body.ticket}}",
            "callback": "{{resume_url.decision}}",
        });
        assert_eq!(
            render_json(&body, &scope),
            Ok(json!({
                "amount": 42,
                "items": ["A-1", 3, null],
                "note": "ticket T-9",
                "callback": "https://t/x?sig=1",
            }))
        );
    }

    #[test]
    fn bad_templates_do_not_parse() {
        assert!(Template::parse("{{args.x").is_err());
        assert!(Template::parse("{{}}").is_err());
        assert!(Template::parse("{{env.HOME}}").is_err());
        assert!(Template::parse("{{args..x}}").is_err());
        assert!(Template::parse("{{args.a b}}").is_err());
        assert!(Template::parse("a }} b").is_ok());
    }

    #[test]
    fn resume_urls_are_listed_in_order() {
        let t = Template::parse("{{resume_url.b}} and {{args.x}} and {{resume_url.a}}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.resume_urls().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(t.literal_prefix(), "");
        let t = Template::parse("https://x/{{args.y}}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.literal_prefix(), "https://x/");
    }
}
