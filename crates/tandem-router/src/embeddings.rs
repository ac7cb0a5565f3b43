//! The embeddings strategy: the customer's message is compared with
//! labelled examples (`POST /v1/routing/examples`), and the nearest vote.
//!
//! An example is embedded when it is added; one added while the embedding
//! model did not answer (or under another model) is pending, and
//! [`embed_pending`] embeds it later: when the strategy next runs, and when
//! the start-up check finds the embedding model answering.

use tandem_llm::{Llm, LlmError, Usage};
use tandem_model::policy::EmbeddingsPolicy;
use tandem_model::{Responder, RoutingExample};
use tandem_store::{Store, StoreError};

/// Most examples embedded in one request.
const EMBED_BATCH: usize = 64;

/// Whether `example` has a vector made by `model`; if not, it is pending.
pub fn is_embedded(example: &RoutingExample, model: &str) -> bool {
    example.vector.is_some() && example.vector_model.as_deref() == Some(model)
}

/// Why pending examples could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error(transparent)]
    Model(#[from] LlmError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Embeds the `examples` that are pending with the configured embedding
/// model, stores their vectors and updates them in place; the tokens it
/// took. Vectors stored before a failure stay stored.
pub async fn embed_pending(
    store: &Store,
    llm: &Llm,
    examples: &mut [RoutingExample],
) -> Result<Usage, PendingError> {
    let model = llm.config().embedding_model().to_owned();
    let pending: Vec<usize> = examples
        .iter()
        .enumerate()
        .filter(|(_, e)| !is_embedded(e, &model))
        .map(|(i, _)| i)
        .collect();
    let mut usage = Usage::default();
    for batch in pending.chunks(EMBED_BATCH) {
        let inputs = batch.iter().map(|i| examples[*i].text.clone()).collect();
        let embedded = llm.embed(inputs).await?;
        usage += embedded.usage;
        for (i, vector) in batch.iter().zip(embedded.vectors) {
            store
                .set_example_vector(examples[*i].id, vector.clone(), &model)
                .await?;
            examples[*i].vector = Some(vector);
            examples[*i].vector_model = Some(model.clone());
        }
    }
    Ok(usage)
}

/// The outcome of a vote: the winner when it won clearly enough, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub winner: Option<Responder>,
    pub reason: String,
}

/// Cosine similarity; 0 for vectors of different sizes or no length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

/// The `k` nearest examples at least `min_similarity` close vote; the
/// winning label decides when it holds `min_vote_share` of the votes.
/// Examples without a vector of `model` are left out.
pub fn vote(
    query: &[f32],
    examples: &[RoutingExample],
    model: &str,
    policy: &EmbeddingsPolicy,
) -> Vote {
    let mut near: Vec<(f32, Responder)> = examples
        .iter()
        .filter(|e| e.vector_model.as_deref() == Some(model))
        .filter_map(|e| e.vector.as_deref().map(|v| (cosine(query, v), e.label)))
        .filter(|(similarity, _)| *similarity >= policy.min_similarity)
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0));
    near.truncate(policy.k as usize);
    if near.is_empty() {
        return Vote {
            winner: None,
            reason: format!(
                "no labelled example within similarity {:.2}",
                policy.min_similarity
            ),
        };
    }
    let human = near.iter().filter(|(_, l)| *l == Responder::Human).count();
    let ai = near.len() - human;
    let (label, votes) = if human >= ai {
        (Responder::Human, human)
    } else {
        (Responder::Ai, ai)
    };
    let share = votes as f32 / near.len() as f32;
    let best = near[0].0;
    if share + f32::EPSILON < policy.min_vote_share {
        return Vote {
            winner: None,
            reason: format!(
                "the {} nearest examples split {ai} ai / {human} human, below the {:.0}% needed",
                near.len(),
                policy.min_vote_share * 100.0
            ),
        };
    }
    Vote {
        winner: Some(label),
        reason: format!(
            "{votes} of the {} nearest examples say {} (closest similarity {best:.2})",
            near.len(),
            label.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use tandem_model::RoutingExampleId;

    use super::*;

    fn example(vector: Vec<f32>, label: Responder) -> RoutingExample {
        RoutingExample {
            id: RoutingExampleId::new(),
            text: String::new(),
            label,
            vector: Some(vector),
            vector_model: Some("m".into()),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_nearest_examples_decide_and_far_ones_do_not_vote() {
        let examples = vec![
            example(vec![1.0, 0.0], Responder::Human),
            example(vec![0.9, 0.1], Responder::Human),
            example(vec![0.0, 1.0], Responder::Ai),
        ];
        let policy = EmbeddingsPolicy::default();
        let vote_near_human = vote(&[1.0, 0.05], &examples, "m", &policy);
        assert_eq!(vote_near_human.winner, Some(Responder::Human));
        let vote_near_ai = vote(&[0.0, 1.0], &examples, "m", &policy);
        assert_eq!(vote_near_ai.winner, Some(Responder::Ai));
        // Another model's vectors are not comparable.
        assert_eq!(vote(&[1.0, 0.0], &examples, "other", &policy).winner, None);
    }

    #[test]
    fn a_split_vote_abstains() {
        let examples = vec![
            example(vec![1.0, 0.0], Responder::Human),
            example(vec![1.0, 0.01], Responder::Ai),
        ];
        let v = vote(&[1.0, 0.0], &examples, "m", &EmbeddingsPolicy::default());
        assert_eq!(v.winner, None, "{}", v.reason);
    }

    #[test]
    fn cosine_of_mismatched_or_zero_vectors_is_zero() {
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    }
}
