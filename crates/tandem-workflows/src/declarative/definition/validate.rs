//! Checks everything serde cannot, in the order a reader meets it: the
//! header (name, step count, arguments), the step ids, then each step (its
//! `next`, then its own fields, see [`super::step_fields`]), then `output`.
//! Every problem is collected, and their order is the file's.

use std::collections::HashSet;

use super::references::{RefCheck, shapes};
use super::step_fields;
use super::{Action, Definition, END, Layout, MAX_STEPS, Problems, Step, is_event_name, is_name};

/// Checks `definition` (normalizing a branch's `on` in place).
pub(super) fn validate(definition: &mut Definition, layout: &Layout, problems: &mut Problems<'_>) {
    check_header(definition, layout.count, problems);
    check_ids(&definition.steps, problems);
    // Keyed by owned ids, so that the loop below may normalize steps in place.
    let shapes = shapes(&definition.steps, layout);
    let refs = RefCheck { shapes: &shapes };
    for (step, &place) in definition.steps.iter_mut().zip(&layout.places) {
        let id = step.id.clone();
        let at = StepScope {
            id: &id,
            place,
            refs: &refs,
        };
        if let Some(next) = &step.next {
            at.check_next(problems, &step.action, next);
        }
        step_fields::check(problems, &at, &mut step.action);
    }
    if let Some(output) = &definition.output {
        refs.output(problems, output);
    }
}

/// The workflow's name, its number of steps, the names of its arguments.
fn check_header(definition: &Definition, step_count: usize, problems: &mut Problems<'_>) {
    if !is_name(&definition.name, &['-']) {
        problems.add(
            None,
            Some("name"),
            format!(
                "{:?} must be 1 to 64 of a-z, 0-9, `_` and `-`",
                definition.name
            ),
        );
    }
    if step_count == 0 {
        problems.add(None, Some("steps"), "a workflow needs at least one step");
    }
    if step_count > MAX_STEPS {
        problems.add(None, Some("steps"), format!("at most {MAX_STEPS} steps"));
    }
    for name in &definition.args.required {
        if !is_event_name(name) {
            problems.add(
                None,
                Some("args.required"),
                format!("{name:?} is not a valid argument name"),
            );
        }
    }
}

/// Each step's id: well formed, not `end`, unique.
fn check_ids(steps: &[Step], problems: &mut Problems<'_>) {
    let mut seen = HashSet::new();
    for step in steps {
        let id = step.id.as_str();
        if !is_name(id, &[]) {
            problems.add(Some(id), Some("id"), "must be 1 to 64 of a-z, 0-9 and `_`");
        } else if id == END {
            problems.add(
                Some(id),
                Some("id"),
                "`end` is reserved for `next = \"end\"`",
            );
        }
        if !seen.insert(id) {
            problems.add(Some(id), Some("id"), "another step has the same id");
        }
    }
}

/// The step being checked: its id and place, and what the other steps are.
pub(super) struct StepScope<'a> {
    pub id: &'a str,
    /// Its place in the file.
    pub place: usize,
    pub refs: &'a RefCheck<'a>,
}

impl StepScope<'_> {
    /// The references of a template in one of the step's fields.
    pub fn template(&self, problems: &mut Problems<'_>, field: &str, source: &str) {
        self.refs
            .template(problems, self.id, Some(self.place), field, source);
    }

    /// A jump in one of the step's fields: to a step, or to `end`.
    pub fn jump(&self, problems: &mut Problems<'_>, field: &str, target: &str) {
        if target != END && !self.refs.shapes.contains_key(target) {
            problems.add(
                Some(self.id),
                Some(field),
                format!("jumps to unknown step {target:?}"),
            );
        }
    }

    /// The step's `next`, which a branch does not have.
    fn check_next(&self, problems: &mut Problems<'_>, action: &Action, next: &str) {
        if matches!(action, Action::Branch(_)) {
            problems.add(
                Some(self.id),
                Some("next"),
                "a branch jumps with `cases` and `default`, not `next`",
            );
        }
        self.jump(problems, "next", next);
    }
}
