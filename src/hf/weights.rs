//! The tensors of each layout by name, and how each is made from lmtrain's (and back).
//!
//! One table, [`mappings`], serves both directions: an lmtrain weight is the concatenation,
//! along dim 0, of one or more HF tensors, transposed when the HF side is a GPT-2 `Conv1D`
//! (stored `[in, out]`, the transpose of lmtrain's `[out, in]`). GPT-2's fused `c_attn` is
//! lmtrain's `qkv` as it is (queries, keys, values in that order, heads contiguous within
//! each); Llama's `q_proj`, `k_proj`, `v_proj` are its three row blocks. RoPE needs no
//! permutation: lmtrain's rotation pairs dimensions `(i, i + D/2)`, transformers'
//! `rotate_half` convention, which the export tests prove with equal logits.

use super::layout::Layout;
use crate::config::ModelConfig;
use crate::model::weight_table;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// One lmtrain weight and the HF tensors it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// lmtrain's name (see the table in [`crate::model`]).
    pub ours: String,
    /// Its shape in lmtrain.
    pub shape: Vec<usize>,
    /// The HF names, in the order their rows are concatenated.
    pub theirs: Vec<String>,
    /// The HF tensors are `[in, out]` (GPT-2 `Conv1D`).
    pub transpose: bool,
}

impl Mapping {
    /// The shape of each HF tensor.
    pub fn their_shape(&self) -> Vec<usize> {
        let mut s = self.shape.clone();
        s[0] /= self.theirs.len();
        if self.transpose {
            s.reverse();
        }
        s
    }
}

/// Every tensor of `layout` for a model of `cfg`, lmtrain side first. GPT-2 has every bias and
/// the LayerNorm biases whatever `cfg.bias` says (an lmtrain model without them exports zeros);
/// Llama's follow `cfg.bias`. The tied head has no tensor of its own on either side.
pub fn mappings(layout: Layout, cfg: &ModelConfig) -> Vec<Mapping> {
    let shapes: HashMap<String, Vec<usize>> = full_table(layout, cfg).into_iter().collect();
    let mut names = match layout {
        Layout::Gpt2 => gpt2_names(cfg.n_layers),
        Layout::Llama => llama_names(cfg.n_layers),
    };
    names.push((
        "lm_head.weight".into(),
        vec!["lm_head.weight".into()],
        false,
    ));
    names
        .into_iter()
        .filter_map(|(ours, theirs, transpose)| {
            let shape = shapes.get(&ours)?.clone();
            Some(Mapping {
                ours,
                shape,
                theirs,
                transpose,
            })
        })
        .collect()
}

/// (lmtrain name, HF names, transposed) of every tensor either side may have.
type Names = Vec<(String, Vec<String>, bool)>;

fn gpt2_names(n_layers: usize) -> Names {
    let one = |ours: String, theirs: String, transpose: bool| (ours, vec![theirs], transpose);
    let mut names = vec![
        one(
            "tok_emb.weight".into(),
            "transformer.wte.weight".into(),
            false,
        ),
        one(
            "pos_emb.weight".into(),
            "transformer.wpe.weight".into(),
            false,
        ),
    ];
    for i in 0..n_layers {
        let (o, t) = (format!("blocks.{i}"), format!("transformer.h.{i}"));
        for (ours, theirs, transpose) in [
            ("ln1", "ln_1", false),
            ("attn.qkv", "attn.c_attn", true),
            ("attn.proj", "attn.c_proj", true),
            ("ln2", "ln_2", false),
            ("mlp.fc", "mlp.c_fc", true),
            ("mlp.proj", "mlp.c_proj", true),
        ] {
            let (w, b) = (format!("{o}.{ours}"), format!("{t}.{theirs}"));
            names.push(one(format!("{w}.weight"), format!("{b}.weight"), transpose));
            names.push(one(format!("{w}.bias"), format!("{b}.bias"), false));
        }
    }
    names.push(one(
        "ln_f.weight".into(),
        "transformer.ln_f.weight".into(),
        false,
    ));
    names.push(one(
        "ln_f.bias".into(),
        "transformer.ln_f.bias".into(),
        false,
    ));
    names
}

fn llama_names(n_layers: usize) -> Names {
    let one = |ours: String, theirs: String| (ours, vec![theirs], false);
    let mut names = vec![one(
        "tok_emb.weight".into(),
        "model.embed_tokens.weight".into(),
    )];
    for i in 0..n_layers {
        let (o, t) = (format!("blocks.{i}"), format!("model.layers.{i}"));
        names.push(one(
            format!("{o}.ln1.weight"),
            format!("{t}.input_layernorm.weight"),
        ));
        names.push(one(
            format!("{o}.ln2.weight"),
            format!("{t}.post_attention_layernorm.weight"),
        ));
        for kind in ["weight", "bias"] {
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| format!("{t}.self_attn.{p}.{kind}"))
                .collect();
            names.push((format!("{o}.attn.qkv.{kind}"), qkv, false));
            for (ours, theirs) in [
                ("attn.proj", "self_attn.o_proj"),
                ("mlp.gate", "mlp.gate_proj"),
                ("mlp.up", "mlp.up_proj"),
                ("mlp.proj", "mlp.down_proj"),
            ] {
                names.push(one(
                    format!("{o}.{ours}.{kind}"),
                    format!("{t}.{theirs}.{kind}"),
                ));
            }
        }
    }
    names.push(one("ln_f.weight".into(), "model.norm.weight".into()));
    names
}

/// lmtrain's weight table as the layout holds it: GPT-2's with every bias.
fn full_table(layout: Layout, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    match layout {
        Layout::Gpt2 => weight_table(&ModelConfig {
            bias: true,
            ..cfg.clone()
        }),
        Layout::Llama => weight_table(cfg),
    }
}

/// The HF tensors of a model of `cfg` whose weights are `ours` (f32, by lmtrain name). A weight
/// the layout has and the model lacks (GPT-2's biases of a bias-free run) is exported as zeros:
/// the model computes the same function.
pub fn to_hf(
    layout: Layout,
    cfg: &ModelConfig,
    ours: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let device = candle_core::Device::Cpu;
    let mut out = Vec::new();
    for m in mappings(layout, cfg) {
        let w = match ours.get(&m.ours) {
            Some(w) => w.to_device(&device)?.to_dtype(DType::F32)?,
            None if m.ours.ends_with(".bias") => {
                Tensor::zeros(m.shape.as_slice(), DType::F32, &device)?
            }
            None => bail!("the checkpoint lacks weight `{}`", m.ours),
        };
        let rows = m.shape[0] / m.theirs.len();
        for (k, name) in m.theirs.iter().enumerate() {
            let part = w.narrow(0, k * rows, rows)?;
            let part = if m.transpose { part.t()? } else { part };
            out.push((name.clone(), part.contiguous()?));
        }
    }
    Ok(out)
}

/// Tensors an HF checkpoint may hold that are not weights (causal-mask and RoPE buffers of
/// older `transformers`): skipped on import.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// How a checkpoint spells its tensor names: with the head model's prefix (`transformer.` /
/// `model.`, as `GPT2LMHeadModel` / `LlamaForCausalLM` save them and [`mappings`] names them), or
/// bare, as the Hub stores GPT-2 itself and as `GPT2Model` / `LlamaModel` save (`wte.weight`,
/// `h.0.attn.c_attn.weight`, `embed_tokens.weight`, `layers.0.self_attn.q_proj.weight`).
/// `lm_head.weight` has no prefix in either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    Prefixed,
    /// The prefix the file's names lack.
    Bare(&'static str),
}

impl Naming {
    /// The naming of the tensors `names` of a `layout` checkpoint whose weights (prefixed) are
    /// `maps`; a file that uses both forms is refused, naming one tensor of each.
    fn of<'a>(
        layout: Layout,
        maps: &[Mapping],
        names: impl Iterator<Item = &'a String> + Clone,
        origin: &str,
    ) -> Result<Naming> {
        let prefix = match layout {
            Layout::Gpt2 => "transformer.",
            Layout::Llama => "model.",
        };
        let known = |bare: &str| {
            let full = format!("{prefix}{bare}");
            maps.iter().any(|m| m.theirs.contains(&full))
        };
        let prefixed = names.clone().filter(|n| n.starts_with(prefix)).min();
        let bare = names.filter(|n| known(n)).min();
        match (prefixed, bare) {
            (Some(p), Some(b)) => bail!(
                "{origin}: the tensor names mix the prefixed form (`{p}`) and the Hub's bare form without `{prefix}` (`{b}`): a checkpoint uses one; save the model again with `save_pretrained`"
            ),
            (None, Some(_)) => Ok(Naming::Bare(prefix)),
            _ => Ok(Naming::Prefixed),
        }
    }

    /// `name` (prefixed) as a checkpoint of this naming spells it.
    fn spell(self, name: &str) -> &str {
        match self {
            Naming::Prefixed => name,
            Naming::Bare(prefix) => name.strip_prefix(prefix).unwrap_or(name),
        }
    }
}

/// lmtrain's weights (f32, by lmtrain name) from an HF checkpoint's tensors, named with the
/// head model's prefix or bare ([`Naming`]): every tensor the layout needs must be there with
/// its shape (`origin` names the file in errors), and a tensor that is neither a weight nor a
/// known buffer is refused by name.
pub fn from_hf(
    layout: Layout,
    cfg: &ModelConfig,
    mut theirs: HashMap<String, Tensor>,
    origin: &str,
) -> Result<HashMap<String, Tensor>> {
    let maps = mappings(layout, cfg);
    let naming = Naming::of(layout, &maps, theirs.keys(), origin)?;
    let mut ours = HashMap::new();
    for m in &maps {
        ours.insert(m.ours.clone(), take(m, naming, &mut theirs, origin)?);
    }
    if cfg.tie_embeddings {
        // Tied models saved with an explicit head copy.
        theirs.remove("lm_head.weight");
    }
    refuse_extra(layout, &theirs, origin)?;
    Ok(ours)
}

/// The lmtrain weight `m` made of its HF tensors, removed from `theirs`.
fn take(
    m: &Mapping,
    naming: Naming,
    theirs: &mut HashMap<String, Tensor>,
    origin: &str,
) -> Result<Tensor> {
    let want = m.their_shape();
    let mut parts = Vec::new();
    for name in &m.theirs {
        let name = naming.spell(name);
        let t = theirs.remove(name).with_context(|| {
            format!("{origin}: the checkpoint lacks tensor `{name}`, which its config.json implies: a checkpoint of another model, or one saved incompletely (save it again with `save_pretrained`)")
        })?;
        if t.dims() != want.as_slice() {
            bail!(
                "{origin}: `{name}` has shape {:?}, config.json implies {want:?}",
                t.dims()
            );
        }
        let t = t.to_dtype(DType::F32)?;
        parts.push(if m.transpose { t.t()?.contiguous()? } else { t });
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Refuses the first (by name) of the tensors left over that is not a known buffer.
fn refuse_extra(layout: Layout, left: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
    let mut extra: Vec<&String> = left.keys().filter(|n| !is_buffer(n)).collect();
    extra.sort();
    if let Some(name) = extra.first() {
        bail!(
            "{origin}: tensor `{name}` is not part of a {} lmtrain can build ({} such tensors): an unsupported variant of the architecture",
            layout.class(),
            extra.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mlp, Norm, Positions};
    use crate::model::init_model;
    use candle_core::Device;

    fn weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
        let (varmap, _) = init_model(cfg, 7, &Device::Cpu).unwrap();
        let map = varmap.data().lock().unwrap();
        map.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The HF tensors of `ours`, by name.
    fn hf_map(
        layout: Layout,
        cfg: &ModelConfig,
        ours: &HashMap<String, Tensor>,
    ) -> HashMap<String, Tensor> {
        to_hf(layout, cfg, ours).unwrap().into_iter().collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn configs() -> Vec<ModelConfig> {
        let base = ModelConfig {
            vocab_size: 11,
            d_model: 8,
            n_layers: 2,
            n_heads: 2,
            context: 6,
            ..ModelConfig::default()
        };
        let llama = ModelConfig {
            positions: Positions::Rope,
            norm: Norm::RmsNorm,
            mlp: Mlp::SwiGlu,
            ..base.clone()
        };
        let mut all = Vec::new();
        for cfg in [base, llama] {
            for (bias, tie) in [(true, true), (false, false), (true, false), (false, true)] {
                all.push(ModelConfig {
                    bias,
                    tie_embeddings: tie,
                    ..cfg.clone()
                });
            }
        }
        all
    }

    /// lmtrain → HF → lmtrain gives back every weight bit for bit, and a bias-free GPT-2-style
    /// model gains only zero biases.
    #[test]
    fn export_then_import_is_the_identity() {
        for cfg in configs() {
            let layout = Layout::of(&cfg).unwrap();
            let ours = weights(&cfg);
            let hf = hf_map(layout, &cfg, &ours);
            let import_cfg = match layout {
                Layout::Gpt2 => ModelConfig {
                    bias: true,
                    ..cfg.clone()
                },
                Layout::Llama => cfg.clone(),
            };
            let back = from_hf(layout, &import_cfg, hf, "test").unwrap();
            for (name, w) in &back {
                let a = values(w);
                match ours.get(name) {
                    Some(o) => assert_eq!(a, values(o), "{name}"),
                    None => assert!(a.iter().all(|&x| x == 0.0), "{name} should be a zero bias"),
                }
            }
            assert!(ours.keys().all(|k| back.contains_key(k)), "{cfg:?}");
        }
    }

    #[test]
    fn conv1d_weights_are_transposed_and_llama_qkv_split_by_rows() {
        let cfg = &configs()[0];
        let ours = weights(cfg);
        let hf = hf_map(Layout::Gpt2, cfg, &ours);
        let c_attn = &hf["transformer.h.0.attn.c_attn.weight"]; // (C, 3C)
        assert_eq!(c_attn.dims(), &[8, 24]);
        let qkv = &ours["blocks.0.attn.qkv.weight"]; // (3C, C)
        let (a, b): (f32, f32) = (
            c_attn.get(2).unwrap().get(17).unwrap().to_scalar().unwrap(),
            qkv.get(17).unwrap().get(2).unwrap().to_scalar().unwrap(),
        );
        assert_eq!(a, b);
        let cfg = &configs()[4];
        let ours = weights(cfg);
        let hf = hf_map(Layout::Llama, cfg, &ours);
        let k = &hf["model.layers.1.self_attn.k_proj.weight"]; // (C, C)
        let qkv = &ours["blocks.1.attn.qkv.weight"];
        assert_eq!(values(k), values(&qkv.narrow(0, 8, 8).unwrap()));
    }

    #[test]
    fn import_refuses_missing_misshapen_and_unknown_tensors() {
        let cfg = &configs()[4];
        let ours = weights(cfg);
        let hf = hf_map(Layout::Llama, cfg, &ours);
        let mut missing = hf.clone();
        missing.remove("model.norm.weight");
        let e = from_hf(Layout::Llama, cfg, missing, "dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks tensor `model.norm.weight`"), "{e}");
        let mut bad = hf.clone();
        bad.insert(
            "model.norm.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = from_hf(Layout::Llama, cfg, bad, "dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has shape [3]"), "{e}");
        let mut extra = hf;
        extra.insert(
            "model.layers.0.self_attn.q_norm.weight".into(),
            Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = from_hf(Layout::Llama, cfg, extra, "dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("q_norm"), "{e}");
    }

    /// `hf` as the Hub stores it: `prefix` stripped from every name but the head's.
    fn bare(hf: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
        hf.iter()
            .map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(k).to_string(), v.clone()))
            .collect()
    }

    /// The Hub's bare names (GPT-2 with its mask buffers, Llama untied with its head) import to
    /// the same floats as the prefixed ones.
    #[test]
    fn import_reads_the_hubs_bare_names_bit_for_bit() {
        let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let gpt2_buffers = ["h.0.attn.bias", "h.1.attn.masked_bias"];
        let llama_buffers = ["layers.0.self_attn.rotary_emb.inv_freq"];
        for (cfg, prefix, buffers) in [
            (&configs()[0], "transformer.", &gpt2_buffers[..]),
            (&configs()[5], "model.", &llama_buffers[..]),
        ] {
            let layout = Layout::of(cfg).unwrap();
            let hf = hf_map(layout, cfg, &weights(cfg));
            let mut hub = bare(&hf, prefix);
            assert!(hub.keys().all(|k| !k.starts_with(prefix)), "{hub:?}");
            for b in buffers {
                hub.insert(b.to_string(), zeros(2));
            }
            let want = from_hf(layout, cfg, hf, "prefixed").unwrap();
            let got = from_hf(layout, cfg, hub, "bare").unwrap();
            assert_eq!(got.len(), want.len(), "{prefix}");
            for (name, w) in &want {
                assert_eq!(values(&got[name]), values(w), "{prefix}{name}");
            }
        }
    }

    #[test]
    fn a_mix_of_bare_and_prefixed_names_and_a_missing_bare_tensor_are_refused_by_name() {
        let cfg = &configs()[0];
        let hf = hf_map(Layout::Gpt2, cfg, &weights(cfg));
        let mut mixed = bare(&hf, "transformer.");
        let wte = mixed.remove("wte.weight").unwrap();
        mixed.insert("transformer.wte.weight".into(), wte);
        let e = from_hf(Layout::Gpt2, cfg, mixed, "dir/model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("dir/model.safetensors: "), "{e}");
        assert!(
            e.contains("mix") && e.contains("`transformer.wte.weight`"),
            "{e}"
        );
        assert!(e.contains("`h.0.attn.c_attn.bias`"), "{e}");
        let mut missing = bare(&hf, "transformer.");
        missing.remove("h.1.mlp.c_fc.bias");
        let e = from_hf(Layout::Gpt2, cfg, missing, "dir/model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks tensor `h.1.mlp.c_fc.bias`"), "{e}");
    }
}
