//! The default embedder: a bag-of-words hash vector, so texts that share
//! words are near each other and every run gives the same numbers.

/// How many dimensions [`bag_of_words_embedding`] returns.
pub const EMBEDDING_DIMS: usize = 64;

/// The default embedding: each lowercased alphanumeric word adds ±1 to one of
/// [`EMBEDDING_DIMS`] dimensions, chosen by a fixed hash (FNV-1a, stable
/// across runs and platforms); the sum is L2-normalised. Texts that share
/// words have a high cosine similarity, unrelated texts one near 0. A text
/// without words embeds as the first unit vector, so that no vector is zero.
pub fn bag_of_words_embedding(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0_f32; EMBEDDING_DIMS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = fnv1a(&word.to_lowercase());
        let dim = (hash % EMBEDDING_DIMS as u64) as usize;
        vector[dim] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        vector[0] = 1.0;
    } else {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
