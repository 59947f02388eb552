//! Choosing the next token from one position's logits, in the order of Hugging Face's logits
//! processors: repetition penalty, then the minimum length (EOS barred), then temperature,
//! top-k and top-p. Work is O(V) per token unless top-k or top-p need an order (then only the
//! kept candidates are sorted), and the buffers are reused.

use crate::rng::Rng;

/// How the next token is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1.0 = off.
    pub top_p: f64,
    /// HF's `repetition_penalty`: a token already in the sequence has its logit divided by it
    /// (multiplied when negative); 1.0 = off.
    pub repetition_penalty: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

/// Reusable buffers for [`Picker::pick`].
#[derive(Debug, Default)]
pub struct Picker {
    logits: Vec<f32>,
    /// Which tokens the repetition penalty has already touched this call.
    penalised: Vec<bool>,
    order: Vec<usize>,
    probs: Vec<f64>,
}

impl Picker {
    /// The next token of a sequence whose tokens so far are `seen`, from its `logits (V)`;
    /// `barred` (EOS before the minimum length) is never chosen unless nothing else is left.
    pub fn pick(
        &mut self,
        logits: &[f32],
        seen: &[u32],
        barred: Option<u32>,
        policy: &Policy,
        rng: &mut Rng,
    ) -> usize {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        let l = &mut self.logits;
        if policy.repetition_penalty != 1.0 {
            let p = policy.repetition_penalty as f32;
            // Once per distinct token, however often it was seen.
            self.penalised.clear();
            self.penalised.resize(l.len(), false);
            for &t in seen {
                let t = t as usize;
                if t < l.len() && !self.penalised[t] {
                    self.penalised[t] = true;
                    l[t] = if l[t] < 0.0 { l[t] * p } else { l[t] / p };
                }
            }
        }
        if let Some(b) = barred
            .map(|b| b as usize)
            .filter(|&b| b < l.len() && l.len() > 1)
        {
            l[b] = f32::NEG_INFINITY;
        }
        if policy.temperature <= 0.0 || l.len() == 1 {
            return argmax(l);
        }
        self.candidates(policy.top_k);
        let max = self
            .order
            .iter()
            .map(|&i| self.logits[i])
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        self.probs.clear();
        self.probs.extend(
            self.order
                .iter()
                .map(|&i| ((self.logits[i] as f64 - max) / policy.temperature).exp()),
        );
        if policy.top_p < 1.0 {
            self.nucleus(policy.top_p);
        }
        let mut u = rng.next_f64() * self.probs.iter().sum::<f64>();
        for (p, &i) in self.probs.iter().zip(&self.order) {
            if u < *p {
                return i;
            }
            u -= p;
        }
        self.order[self.order.len() - 1]
    }

    /// `order` ← every token, or the `top_k` largest logits (most likely first; ties to the
    /// lower id).
    fn candidates(&mut self, top_k: usize) {
        let l = &self.logits;
        self.order.clear();
        self.order.extend(0..l.len());
        let desc = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]).then(a.cmp(b));
        if top_k > 0 && top_k < l.len() {
            self.order.select_nth_unstable_by(top_k - 1, desc);
            self.order.truncate(top_k);
            self.order.sort_unstable_by(desc);
        }
    }

    /// Keeps the most likely candidates whose probability mass first reaches `top_p`.
    fn nucleus(&mut self, top_p: f64) {
        let l = &self.logits;
        if self.order.len() == l.len() {
            // Not yet ordered (no top-k): order by probability, most likely first.
            let mut pairs: Vec<(usize, f64)> = self
                .order
                .iter()
                .copied()
                .zip(self.probs.iter().copied())
                .collect();
            pairs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            self.order.clear();
            self.probs.clear();
            for (i, p) in pairs {
                self.order.push(i);
                self.probs.push(p);
            }
        }
        let total: f64 = self.probs.iter().sum();
        let mut mass = 0.0;
        let keep = self
            .probs
            .iter()
            .position(|p| {
                mass += p / total;
                mass >= top_p
            })
            .map_or(self.probs.len(), |i| i + 1);
        self.probs.truncate(keep);
        self.order.truncate(keep);
    }
}

/// The index of the largest logit, the lowest one among ties.
fn argmax(l: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, rng: &mut Rng) -> usize {
        let policy = Policy {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
        };
        Picker::default().pick(logits, &[], None, &policy, rng)
    }

    #[test]
    fn greedy_takes_argmax_and_top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(0);
        assert_eq!(pick(&logits, 0.0, 0, 1.0, &mut rng), 1);
        for _ in 0..20 {
            assert_eq!(pick(&logits, 1.0, 1, 1.0, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Softmax of these is ≈ [0.665, 0.245, 0.090]: top_p 0.6 keeps only token 0, 0.8 the
        // first two.
        let logits = [2.0f32, 1.0, 0.0];
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            assert_eq!(pick(&logits, 1.0, 0, 0.6, &mut rng), 0);
            assert_ne!(pick(&logits, 1.0, 0, 0.8, &mut rng), 2);
            assert_ne!(pick(&[0.0, 1.0, 2.0], 1.0, 0, 0.8, &mut rng), 0);
        }
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let logits = [0.0f32, 3.0, 1.0, 2.9, -2.0];
        let mut rng = Rng::new(4);
        for _ in 0..200 {
            let t = pick(&logits, 5.0, 2, 1.0, &mut rng);
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut rng = Rng::new(2);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&logits, 1.0, 0, 1.0, &mut rng) == 1)
            .count();
        // Binomial standard deviation sqrt(n·p·q) ≈ 61 → 0.003 of n; allow 0.02.
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.02, "{ones}");
    }

    /// HF's rule: positive logits divided, negative multiplied, once per distinct token; and a
    /// barred token is never chosen while another is possible.
    #[test]
    fn repetition_penalty_and_a_barred_token() {
        let greedy = |penalty: f64| Policy {
            temperature: 0.0,
            repetition_penalty: penalty,
            ..Policy::default()
        };
        let mut p = Picker::default();
        let mut rng = Rng::new(3);
        let logits = [2.0f32, 1.5, -0.5, -0.6];
        assert_eq!(p.pick(&logits, &[0, 0, 0], None, &greedy(1.0), &mut rng), 0);
        // 2.0 / 1.5 = 1.33 < 1.5: token 1 wins; seen three times, penalised once.
        assert_eq!(p.pick(&logits, &[0, 0, 0], None, &greedy(1.5), &mut rng), 1);
        // -0.5 · 1.5 = -0.75 < -0.6 once 0 and 1 are barred or penalised away.
        let l2 = [-0.5f32, -0.6];
        assert_eq!(p.pick(&l2, &[0], None, &greedy(1.5), &mut rng), 1);
        assert_eq!(p.pick(&logits, &[], Some(0), &greedy(1.0), &mut rng), 1);
        let sampled = Policy::default();
        for _ in 0..100 {
            assert_ne!(p.pick(&logits, &[], Some(0), &sampled, &mut rng), 0);
        }
    }
}
