//! What the model's final answer comes to: a published reply, a draft held
//! for approval, or an escalation to humans. [`decide`] is the rule, a pure
//! function of the answer, the policy and the classifier's verdict;
//! `Reply::finish` carries out what it decided (docs/reply-path.md,
//! "Confidence" and "Approval gate").

use tandem_llm::Completion;
use tandem_llm::prompt::strip_copied_labels;
use tandem_model::policy::Policy;
use tandem_model::{Responder, ThreadId};

use super::actions::ConfidentReply;
use crate::decision::Decision;

/// What becomes of the model's final answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Finish {
    /// The reply goes to the customer now.
    Publish(Answer),
    /// The reply waits, as a draft, for a person's approval; `why` is the
    /// policy's reason.
    Draft { answer: Answer, why: &'static str },
    /// Humans answer: an escalation for `reason`, with the AI's reply as a
    /// suggestion when it wrote a usable one.
    Escalate {
        reason: String,
        suggestion: Option<String>,
    },
}

/// The AI's reply, as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Answer {
    pub text: String,
    /// The confidence the AI reported, when the policy asks for one.
    pub confidence: Option<f64>,
    /// The decision that made the reply: its `metadata.routing`.
    pub routing: Decision,
}

/// Where the answer goes, and the decisions taken on the way, in order, for
/// the run's record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decided {
    pub decisions: Vec<Decision>,
    pub finish: Finish,
}

/// What becomes of the model's final answer under `policy`: the confidence
/// threshold first (when the policy asks for a confidence, the answer must
/// be `{reply, confidence}`), then an empty reply, then the approval gate
/// (`thread` listed in `approval.threads`, mode `always`, or mode
/// `sensitive` when the classifier found the topic `sensitive`).
pub(super) fn decide(
    completion: &Completion,
    policy: &Policy,
    thread: ThreadId,
    sensitive: bool,
) -> Decided {
    let mut decisions = Vec::new();
    let (text, confidence) = match confident_reply(completion, policy, &mut decisions) {
        Ok(reply) => reply,
        Err((reason, suggestion)) => {
            let finish = Finish::Escalate { reason, suggestion };
            return Decided { decisions, finish };
        }
    };
    // A small model may begin as the human agent's last turn did
    // (`Sam (human agent): …`): the AI never speaks under a person's name.
    let text = match strip_copied_labels(&text) {
        unlabelled if unlabelled.len() == text.len() => text,
        unlabelled => unlabelled.to_owned(),
    };
    if text.trim().is_empty() {
        decisions.push(Decision::rule(
            "fallback",
            Some(Responder::Human),
            "the model answered with no text",
        ));
        let finish = Finish::Escalate {
            reason: "the model answered with no text".into(),
            suggestion: None,
        };
        return Decided { decisions, finish };
    }
    let routing = Decision {
        strategy: "ai".into(),
        responder: Some(Responder::Ai),
        reason: "the AI wrote the reply".into(),
        model: Some(completion.model.clone()),
        latency_ms: completion.latency_ms,
        usage: Some(completion.usage),
    };
    decisions.push(routing.clone());
    let answer = Answer {
        text,
        confidence,
        routing,
    };
    let finish = match policy.needs_approval(thread, sensitive) {
        Some(why) => {
            decisions.push(Decision::rule("approval", None, why));
            Finish::Draft { answer, why }
        }
        None => Finish::Publish(answer),
    };
    Decided { decisions, finish }
}

/// The reply's text, and its confidence when the policy asks for one; or,
/// for a confidence below the threshold or an answer that does not fit the
/// schema, the reason to escalate and the suggestion that goes with it.
fn confident_reply(
    completion: &Completion,
    policy: &Policy,
    decisions: &mut Vec<Decision>,
) -> Result<(String, Option<f64>), (String, Option<String>)> {
    if !policy.confidence.enabled {
        return Ok((completion.text.clone(), None));
    }
    let threshold = policy.confidence.threshold;
    match serde_json::from_str::<ConfidentReply>(&completion.text) {
        Ok(reply) if !reply.reply.trim().is_empty() && (0.0..=1.0).contains(&reply.confidence) => {
            let low = reply.confidence < threshold;
            decisions.push(Decision {
                strategy: "confidence".into(),
                responder: Some(if low { Responder::Human } else { Responder::Ai }),
                reason: format!(
                    "confidence {:.2} {} the threshold {:.2}",
                    reply.confidence,
                    if low { "is below" } else { "meets" },
                    threshold
                ),
                model: Some(completion.model.clone()),
                latency_ms: completion.latency_ms,
                usage: Some(completion.usage),
            });
            if low {
                let reason = format!(
                    "the AI's confidence {:.2} is below {:.2}",
                    reply.confidence, threshold
                );
                return Err((reason, Some(reply.reply)));
            }
            Ok((reply.reply, Some(reply.confidence)))
        }
        _ => {
            decisions.push(Decision::rule(
                "fallback",
                Some(Responder::Human),
                "the model's answer did not fit the reply schema",
            ));
            Err(("the model's answer was malformed".into(), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_llm::Usage;
    use tandem_model::policy::{ApprovalMode, ApprovalPolicy, ConfidencePolicy};

    use super::*;

    const ALWAYS: &str = "the policy requires approval of every AI reply";
    const SENSITIVE: &str = "the classifier marked the topic as sensitive";
    const LISTED: &str = "the policy requires approval in this thread";

    fn completion(text: &str) -> Completion {
        Completion {
            text: text.into(),
            tool_calls: Vec::new(),
            usage: Usage {
                prompt_tokens: 120,
                completion_tokens: 30,
                total_tokens: 150,
            },
            model: "gpt-test".into(),
            finish_reason: Some("stop".into()),
            latency_ms: 42,
            attempts: 1,
        }
    }

    fn approval(mode: ApprovalMode) -> Policy {
        Policy {
            approval: ApprovalPolicy {
                mode,
                threads: Vec::new(),
            },
            ..Policy::default()
        }
    }

    /// Confidence on, at the default threshold (0.7).
    fn confident(mode: ApprovalMode) -> Policy {
        Policy {
            confidence: ConfidencePolicy {
                enabled: true,
                ..ConfidencePolicy::default()
            },
            ..approval(mode)
        }
    }

    /// A decision that comes with the model call's cost.
    fn modelled(strategy: &str, responder: Responder, reason: &str) -> Decision {
        Decision {
            strategy: strategy.into(),
            responder: Some(responder),
            reason: reason.into(),
            model: Some("gpt-test".into()),
            latency_ms: 42,
            usage: Some(completion("").usage),
        }
    }

    fn wrote() -> Decision {
        modelled("ai", Responder::Ai, "the AI wrote the reply")
    }

    fn answer(text: &str, confidence: Option<f64>) -> Answer {
        Answer {
            text: text.into(),
            confidence,
            routing: wrote(),
        }
    }

    fn decide_for(text: &str, policy: &Policy, sensitive: bool) -> Decided {
        decide(&completion(text), policy, ThreadId::new(), sensitive)
    }

    #[test]
    fn without_a_gate_the_reply_is_published_as_written() {
        for sensitive in [false, true] {
            let decided = decide_for("It ships today.", &approval(ApprovalMode::Never), sensitive);
            assert_eq!(
                decided,
                Decided {
                    decisions: vec![wrote()],
                    finish: Finish::Publish(answer("It ships today.", None)),
                }
            );
        }
        // Without confidence, JSON is text like any other.
        let json = r#"{"reply": "Yes", "confidence": 0.1}"#;
        let decided = decide_for(json, &Policy::default(), false);
        assert_eq!(decided.finish, Finish::Publish(answer(json, None)));
    }

    #[test]
    fn approval_always_holds_every_reply() {
        for sensitive in [false, true] {
            let decided = decide_for(
                "It ships today.",
                &approval(ApprovalMode::Always),
                sensitive,
            );
            assert_eq!(
                decided,
                Decided {
                    decisions: vec![wrote(), Decision::rule("approval", None, ALWAYS)],
                    finish: Finish::Draft {
                        answer: answer("It ships today.", None),
                        why: ALWAYS,
                    },
                }
            );
        }
    }

    #[test]
    fn approval_sensitive_holds_only_what_the_classifier_marked() {
        let policy = approval(ApprovalMode::Sensitive);
        let plain = decide_for("It ships today.", &policy, false);
        assert_eq!(
            plain.finish,
            Finish::Publish(answer("It ships today.", None))
        );
        assert_eq!(plain.decisions, [wrote()]);
        let marked = decide_for("It ships today.", &policy, true);
        assert_eq!(
            marked.finish,
            Finish::Draft {
                answer: answer("It ships today.", None),
                why: SENSITIVE,
            }
        );
        assert_eq!(
            marked.decisions,
            [wrote(), Decision::rule("approval", None, SENSITIVE)]
        );
    }

    #[test]
    fn a_listed_thread_holds_its_replies_whatever_the_mode() {
        let thread = ThreadId::new();
        for mode in [
            ApprovalMode::Never,
            ApprovalMode::Always,
            ApprovalMode::Sensitive,
        ] {
            let mut policy = approval(mode);
            policy.approval.threads = vec![ThreadId::new(), thread];
            for sensitive in [false, true] {
                let decided = decide(&completion("Hi"), &policy, thread, sensitive);
                assert_eq!(
                    decided.finish,
                    Finish::Draft {
                        answer: answer("Hi", None),
                        why: LISTED,
                    },
                    "{mode:?}, sensitive {sensitive}"
                );
            }
            // Another thread follows the mode.
            let other = decide(&completion("Hi"), &policy, ThreadId::new(), false);
            let held = matches!(other.finish, Finish::Draft { why: ALWAYS, .. });
            assert_eq!(held, mode == ApprovalMode::Always, "{mode:?}");
        }
    }

    #[test]
    fn a_label_copied_from_the_prompt_never_reaches_the_customer() {
        let decided = decide_for(
            "Sam (human agent): Of course, you can pay by card.",
            &approval(ApprovalMode::Never),
            false,
        );
        let Finish::Publish(answer) = decided.finish else {
            panic!("published: {decided:?}");
        };
        assert_eq!(answer.text, "Of course, you can pay by card.");
        // Nothing but the label: nothing to say.
        let decided = decide_for("Sam (human agent): ", &approval(ApprovalMode::Never), false);
        assert!(
            matches!(decided.finish, Finish::Escalate { .. }),
            "{decided:?}"
        );
    }

    #[test]
    fn an_empty_answer_goes_to_humans() {
        for text in ["", "  \n"] {
            for policy in [
                approval(ApprovalMode::Never),
                approval(ApprovalMode::Always),
            ] {
                let decided = decide_for(text, &policy, false);
                assert_eq!(
                    decided,
                    Decided {
                        decisions: vec![Decision::rule(
                            "fallback",
                            Some(Responder::Human),
                            "the model answered with no text",
                        )],
                        finish: Finish::Escalate {
                            reason: "the model answered with no text".into(),
                            suggestion: None,
                        },
                    }
                );
            }
        }
    }

    #[test]
    fn a_confidence_at_or_above_the_threshold_publishes_the_reply() {
        for (confidence, shown) in [(0.9, "0.90"), (0.7, "0.70"), (1.0, "1.00")] {
            let text = format!(r#"{{"reply": "Yes, 30 days.", "confidence": {confidence}}}"#);
            let decided = decide_for(&text, &confident(ApprovalMode::Never), false);
            assert_eq!(
                decided,
                Decided {
                    decisions: vec![
                        modelled(
                            "confidence",
                            Responder::Ai,
                            &format!("confidence {shown} meets the threshold 0.70"),
                        ),
                        wrote(),
                    ],
                    finish: Finish::Publish(answer("Yes, 30 days.", Some(confidence))),
                }
            );
        }
    }

    #[test]
    fn a_confidence_below_the_threshold_escalates_with_the_reply_as_suggestion() {
        for mode in [ApprovalMode::Never, ApprovalMode::Always] {
            let text = r#"{"reply": "Maybe?", "confidence": 0.25}"#;
            let decided = decide_for(text, &confident(mode), true);
            assert_eq!(
                decided,
                Decided {
                    decisions: vec![modelled(
                        "confidence",
                        Responder::Human,
                        "confidence 0.25 is below the threshold 0.70",
                    )],
                    finish: Finish::Escalate {
                        reason: "the AI's confidence 0.25 is below 0.70".into(),
                        suggestion: Some("Maybe?".into()),
                    },
                },
                "{mode:?}"
            );
        }
        let mut strict = confident(ApprovalMode::Never);
        strict.confidence.threshold = 0.95;
        let decided = decide_for(r#"{"reply": "Yes", "confidence": 0.9}"#, &strict, false);
        assert!(
            matches!(decided.finish, Finish::Escalate { ref reason, .. } if reason == "the AI's confidence 0.90 is below 0.95"),
            "{decided:?}"
        );
    }

    #[test]
    fn a_confident_reply_still_passes_the_approval_gate() {
        let text = r#"{"reply": "Yes", "confidence": 0.8}"#;
        let decided = decide_for(text, &confident(ApprovalMode::Sensitive), true);
        assert_eq!(
            decided,
            Decided {
                decisions: vec![
                    modelled(
                        "confidence",
                        Responder::Ai,
                        "confidence 0.80 meets the threshold 0.70"
                    ),
                    wrote(),
                    Decision::rule("approval", None, SENSITIVE),
                ],
                finish: Finish::Draft {
                    answer: answer("Yes", Some(0.8)),
                    why: SENSITIVE,
                },
            }
        );
    }

    #[test]
    fn an_answer_that_does_not_fit_the_confidence_schema_is_malformed() {
        let malformed = [
            "Yes, 30 days.",
            "",
            r#"{"reply": "Yes"}"#,
            r#"{"confidence": 0.9}"#,
            r#"{"reply": "Yes", "confidence": "high"}"#,
            r#"{"reply": "Yes", "confidence": 0.9, "note": "extra"}"#,
            r#"{"reply": "Yes", "confidence": 1.5}"#,
            r#"{"reply": "Yes", "confidence": -0.1}"#,
            r#"{"reply": "  ", "confidence": 0.9}"#,
            r#"[{"reply": "Yes", "confidence": 0.9}]"#,
        ];
        for text in malformed {
            for mode in [ApprovalMode::Never, ApprovalMode::Always] {
                let decided = decide_for(text, &confident(mode), false);
                assert_eq!(
                    decided,
                    Decided {
                        decisions: vec![Decision::rule(
                            "fallback",
                            Some(Responder::Human),
                            "the model's answer did not fit the reply schema",
                        )],
                        finish: Finish::Escalate {
                            reason: "the model's answer was malformed".into(),
                            suggestion: None,
                        },
                    },
                    "{text}"
                );
            }
        }
    }
}
