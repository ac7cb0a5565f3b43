//! References in templates (`{{steps.<id>.…}}`, `{{run.…}}`,
//! `{{resume_url.<id>}}`), checked against the steps they name: a step's
//! result exists only after it ran, and has the fields its kind gives it.

use std::collections::HashMap;

use serde_json::Value;

use super::{JsonShape, Layout, Problems, Step};
use crate::declarative::template::{Reference, Root, Template, strings_in};

/// What references need to know of a step.
pub(super) struct Shape {
    /// Its first place (ids are unique once the definition is valid).
    place: usize,
    /// `None` for a step that did not parse.
    kind: Option<&'static str>,
    /// See [`super::Action::result_fields`].
    fields: Option<&'static [&'static str]>,
    /// See [`super::Action::json_shape`].
    json: JsonShape,
}

/// What references need to know of each step, by id: the first step with
/// an id counts, and a step that did not parse is known, with no kind.
pub(super) fn shapes(steps: &[Step], layout: &Layout) -> HashMap<String, Shape> {
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for (step, &place) in steps.iter().zip(&layout.places) {
        shapes.entry(step.id.clone()).or_insert(Shape {
            place,
            kind: Some(step.action.kind()),
            fields: step.action.result_fields(),
            json: step.action.json_shape(),
        });
    }
    for (id, place) in &layout.unparsed {
        shapes.entry(id.clone()).or_insert(Shape {
            place: *place,
            kind: None,
            fields: None,
            json: JsonShape::Any,
        });
    }
    shapes
}

/// Checks references against the steps they name.
pub(super) struct RefCheck<'a> {
    pub shapes: &'a HashMap<String, Shape>,
}

impl RefCheck<'_> {
    /// `at` is the referring step's place; `None` for the output, which
    /// may name any step.
    pub fn template(
        &self,
        problems: &mut Problems<'_>,
        step: &str,
        at: Option<usize>,
        field: &str,
        source: &str,
    ) {
        let step_label = (!step.is_empty()).then_some(step);
        match Template::parse(source) {
            Ok(template) => {
                for reference in template.references() {
                    self.reference(problems, step, at, field, reference);
                }
            }
            Err(e) => problems.add(step_label, Some(field), e.0),
        }
    }

    pub fn reference(
        &self,
        problems: &mut Problems<'_>,
        step: &str,
        at: Option<usize>,
        field: &str,
        reference: &Reference,
    ) {
        let step_label = (!step.is_empty()).then_some(step);
        let mut problem = |message: String| {
            problems.add(
                step_label,
                Some(field),
                format!("`{{{{{reference}}}}}`: {message}"),
            );
        };
        match reference.root {
            Root::Args => {}
            Root::Run => {
                if !matches!(reference.path.as_slice(), [f] if matches!(f.as_str(), "id" | "name" | "version"))
                {
                    problem("the run has `run.id`, `run.name` and `run.version`".into());
                }
            }
            Root::ResumeUrl => match reference.path.as_slice() {
                [target] => match self.shapes.get(target).map(|s| s.kind) {
                    Some(Some("wait_event") | None) => {}
                    Some(Some(kind)) => problem(format!(
                        "step {target:?} is a {kind} step, not a wait_event"
                    )),
                    None => problem(format!("no step {target:?}")),
                },
                _ => problem("write `resume_url.<wait_event step id>`".into()),
            },
            Root::Steps => {
                let Some((target, rest)) = reference.path.split_first() else {
                    problem("write `steps.<step id>…`".into());
                    return;
                };
                let Some(shape) = self.shapes.get(target) else {
                    problem(format!("no step {target:?}"));
                    return;
                };
                if at.is_some_and(|at| shape.place >= at) {
                    problem(format!(
                        "step {target:?} does not come before this one, so it has no result here"
                    ));
                    return;
                }
                if let (Some(first), Some(fields)) = (rest.first(), shape.fields)
                    && !fields.contains(&first.as_str())
                {
                    let kind = shape.kind.unwrap_or_default();
                    problem(format!(
                        "{} {kind} step's result has {}",
                        article(kind),
                        fields
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    return;
                }
                if rest.first().map(String::as_str) == Some("json") {
                    match (&shape.json, rest.get(1)) {
                        (JsonShape::None, _) => problem(format!(
                            "step {target:?} has no `schema`, so its result has no `json` \
                             (its answer is `text`)"
                        )),
                        (JsonShape::Properties(names), Some(field)) if !names.contains(field) => {
                            problem(format!(
                                "the `schema` of step {target:?} has no property {field:?}"
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The templates of the definition's `output`, which may name any step.
    pub fn output(&self, problems: &mut Problems<'_>, output: &Value) {
        let mut strings = Vec::new();
        strings_in(output, "output", &mut strings);
        for (field, source) in strings {
            self.template(problems, "", None, &field, source);
        }
    }
}

/// "a" or "an", as the kind's name is said.
fn article(kind: &str) -> &'static str {
    match kind {
        "http" | "llm" | "assign" | "ask_human" | "approval" => "an",
        _ => "a",
    }
}
