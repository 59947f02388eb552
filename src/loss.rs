//! The loss: masked mean negative log-likelihood over real target tokens, the one path shared
//! by training and evaluation.
//!
//! Every token after `<BOS>` is predicted, `<EOS>` included; padding never counts. The functions
//! here return SUMS over real targets: training divides by the real tokens of the whole
//! optimizer step (all micro-batches), evaluation by those of the split, so the mean is over
//! tokens, not over sequences or batches (as in nanoGPT and llm.c).

use crate::data::batch::Batch;
use crate::kernels;
use crate::model::{Gpt, Mode};
use candle_core::{Result, Tensor};

/// `Σ −log p(target)` over the real targets of `ids (B, T)`: `targets (B, T)` u32 and
/// `target_mask (B, T)` (1.0 = real, 0.0 = pad), `key_mask` as in [`Gpt::forward_t`]. The head
/// and the loss run as one op where the kernels allow (the `(B, T, V)` logits are then never
/// held). `with_grad = false` is for evaluation: a backward through the result may then be an
/// error.
pub fn nll_sum(
    model: &Gpt,
    ids: &Tensor,
    key_mask: Option<&Tensor>,
    (targets, target_mask): (&Tensor, &Tensor),
    mode: &Mode,
    with_grad: bool,
) -> Result<Tensor> {
    let x = model.hidden(ids, key_mask, mode)?; // (B, T, C)
    let (b, t, c) = x.dims3()?;
    let h = x.reshape((b * t, c))?; // (B·T, C)
    let targets = targets.flatten_all()?; // (B·T)
    let target_mask = target_mask.flatten_all()?; // (B·T)
    let w = model.head_weight(); // (V, C)
    let how = (with_grad, model.config().logit_softcap);
    kernels::loss::head_nll_sum(model.kernels(), &h, w, &targets, &target_mask, how)
}

/// [`nll_sum`] of a batch. With right padding the real inputs are exactly the real targets'
/// positions, so `mask` doubles as the attention key mask unless the batch has context-only
/// targets (a strided evaluation window, which carries its own key mask).
pub fn batch_nll_sum(model: &Gpt, batch: &Batch, mode: &Mode, with_grad: bool) -> Result<Tensor> {
    let targets = (&batch.targets, &batch.mask);
    let keys = batch.key_mask.as_ref().unwrap_or(&batch.mask);
    nll_sum(model, &batch.ids, Some(keys), targets, mode, with_grad)
}

/// The loss from logits: `logits (.., V)`, `targets (..)` u32, `mask (..)` → the SUM over real
/// positions of `−log softmax(logits)[target]` (pad positions add nothing to the value or the
/// gradient), on the default kernels.
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    kernels::loss::masked_nll_sum(kernels::Kernels::Auto, logits, targets, mask)
}
