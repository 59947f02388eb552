//! `config.json` of each layout: written from an lmtrain model config, and read back into one
//! (refusing, by name, every field whose value lmtrain cannot compute).

use super::layout::Layout;
use crate::config::{Mlp, ModelConfig, Norm, Positions};
use crate::data::vocab::Specials;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// The `config.json` of a model of `cfg` in `layout`, with the vocabulary's special ids.
/// Dropout: `embd_pdrop`/`resid_pdrop` are lmtrain's dropout sites (embeddings, the attention
/// and MLP outputs); lmtrain has no dropout on attention probabilities, so `attn_pdrop` /
/// `attention_dropout` are 0.
pub fn to_json(layout: Layout, cfg: &ModelConfig, specials: &Specials) -> Value {
    let mut v = match layout {
        Layout::Gpt2 => json!({
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_positions": cfg.context,
            "n_inner": cfg.hidden_dim(),
            "activation_function": gpt2_activation(cfg.mlp),
            "layer_norm_epsilon": cfg.norm_eps,
            "embd_pdrop": cfg.dropout,
            "resid_pdrop": cfg.dropout,
            "attn_pdrop": 0.0,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
        }),
        Layout::Llama => json!({
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_heads,
            "head_dim": cfg.head_dim(),
            "intermediate_size": cfg.hidden_dim(),
            "max_position_embeddings": cfg.context,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_parameters": { "rope_type": "default", "rope_theta": cfg.rope_theta },
            "rope_scaling": null,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "attention_dropout": 0.0,
            "pretraining_tp": 1,
        }),
    };
    let common = json!({
        "architectures": [layout.class()],
        "model_type": layout.model_type(),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": specials.bos,
        "eos_token_id": specials.eos,
        "pad_token_id": specials.pad,
        "initializer_range": crate::model::INIT_STD,
        "use_cache": true,
        "dtype": "float32",
        "torch_dtype": "float32",
    });
    if let (Some(v), Value::Object(c)) = (v.as_object_mut(), common) {
        v.extend(c);
    }
    v
}

/// `generation_config.json`: the special ids generation stops and pads with.
pub fn generation_json(specials: &Specials) -> Value {
    json!({
        "bos_token_id": specials.bos,
        "eos_token_id": specials.eos,
        "pad_token_id": specials.pad,
    })
}

/// The layout and lmtrain model config a `config.json` describes (`origin` names the file in
/// errors). `dropout` is left at 0: it is a training setting, which the run's config gives.
pub fn from_json(v: &Value, origin: &str) -> Result<(Layout, ModelConfig)> {
    let obj = v
        .as_object()
        .with_context(|| format!("{origin}: not a JSON object"))?;
    let f = Fields { obj, origin };
    match f.str("model_type")?.as_str() {
        "gpt2" => Ok((Layout::Gpt2, gpt2(&f)?)),
        "llama" => Ok((Layout::Llama, llama(&f)?)),
        other => bail!(
            "{origin}: model_type {other:?} is not supported: --init-from reads \"gpt2\" (GPT2LMHeadModel) and \"llama\" (LlamaForCausalLM) folders"
        ),
    }
}

/// GPT-2's `activation_function` for an lmtrain MLP of the GPT-2 layout (`transformers`'
/// `ACT2FN`: "gelu_new" is the tanh GELU, "relu2" is ReLU²).
fn gpt2_activation(mlp: Mlp) -> &'static str {
    match mlp {
        Mlp::Relu2 => "relu2",
        Mlp::Gelu | Mlp::SwiGlu => "gelu_new",
    }
}

fn gpt2(f: &Fields) -> Result<ModelConfig> {
    let d_model = f.usize("n_embd")?;
    let mlp = match f.str_or("activation_function", "gelu_new")?.as_str() {
        "gelu_new" | "gelu_pytorch_tanh" => Mlp::Gelu,
        "relu2" => Mlp::Relu2,
        act => bail!("{}: activation_function {act:?} is not supported: lmtrain's GELU is the tanh form (\"gelu_new\"), and \"relu2\" is its ReLU²", f.origin),
    };
    f.require("scale_attn_weights", json!(true))?;
    f.require("scale_attn_by_inverse_layer_idx", json!(false))?;
    f.require("add_cross_attention", json!(false))?;
    Ok(ModelConfig {
        vocab_size: f.usize("vocab_size")?,
        d_model,
        n_layers: f.usize("n_layer")?,
        n_heads: f.usize("n_head")?,
        context: f.usize("n_positions")?,
        d_ff: f.opt_usize("n_inner")?.unwrap_or(4 * d_model),
        dropout: 0.0,
        positions: Positions::Learned,
        norm: Norm::LayerNorm,
        mlp,
        bias: true,
        tie_embeddings: f.bool_or("tie_word_embeddings", true)?,
        norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
        ..ModelConfig::default()
    })
}

fn llama(f: &Fields) -> Result<ModelConfig> {
    let (d_model, n_heads) = (f.usize("hidden_size")?, f.usize("num_attention_heads")?);
    let kv = f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    if kv != n_heads {
        bail!("{}: num_key_value_heads = {kv} (grouped-query attention) is not supported: lmtrain's attention has as many key/value heads as query heads ({n_heads})", f.origin);
    }
    if let Some(hd) = f.opt_usize("head_dim")? {
        if hd * n_heads != d_model {
            bail!(
                "{}: head_dim = {hd} is not hidden_size / num_attention_heads = {}: not supported",
                f.origin,
                d_model / n_heads.max(1)
            );
        }
    }
    let act = f.str_or("hidden_act", "silu")?;
    if act != "silu" {
        bail!(
            "{}: hidden_act {act:?} is not supported: lmtrain's SwiGLU gates with \"silu\"",
            f.origin
        );
    }
    let (attn_bias, mlp_bias) = (
        f.bool_or("attention_bias", false)?,
        f.bool_or("mlp_bias", false)?,
    );
    if attn_bias != mlp_bias {
        bail!("{}: attention_bias = {attn_bias} but mlp_bias = {mlp_bias}: lmtrain has one model.bias for both", f.origin);
    }
    f.require("pretraining_tp", json!(1))?;
    Ok(ModelConfig {
        vocab_size: f.usize("vocab_size")?,
        d_model,
        n_layers: f.usize("num_hidden_layers")?,
        n_heads,
        context: f.usize("max_position_embeddings")?,
        d_ff: f.usize("intermediate_size")?,
        dropout: 0.0,
        positions: Positions::Rope,
        norm: Norm::RmsNorm,
        mlp: Mlp::SwiGlu,
        bias: attn_bias,
        tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
        norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta: rope_theta(f)?,
        ..ModelConfig::default()
    })
}

/// `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x); only the default
/// (unscaled) rotary embedding is supported.
fn rope_theta(f: &Fields) -> Result<f64> {
    let scaling = f.obj.get("rope_scaling").filter(|v| !v.is_null());
    let params = f.obj.get("rope_parameters").filter(|v| !v.is_null());
    for (key, p) in [("rope_scaling", scaling), ("rope_parameters", params)] {
        let Some(p) = p else { continue };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str);
        if key == "rope_scaling" || kind.is_some_and(|k| k != "default") {
            bail!("{}: {key} = {p} (rope scaling) is not supported: lmtrain computes the default rotary embedding only", f.origin);
        }
    }
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| f.obj.get("rope_theta"));
    match theta {
        None => Ok(10_000.0),
        Some(t) => t
            .as_f64()
            .with_context(|| format!("{}: rope_theta = {t} is not a number", f.origin)),
    }
}

/// Typed access to a `config.json`'s fields with errors naming the file and field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.obj
            .get(key)
            .with_context(|| format!("{}: field {key:?} is missing", self.origin))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .with_context(|| format!("{}: {key} = {v} must be a positive integer", self.origin))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    fn str(&self, key: &str) -> Result<String> {
        let v = self.get(key)?;
        v.as_str()
            .map(String::from)
            .with_context(|| format!("{}: {key} = {v} must be a string", self.origin))
    }

    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(_) => self.str(key),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .with_context(|| format!("{}: {key} = {v} must be true or false", self.origin)),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .with_context(|| format!("{}: {key} = {v} must be a number", self.origin)),
        }
    }

    /// The field, when present, must have the value lmtrain computes.
    fn require(&self, key: &str, want: Value) -> Result<()> {
        match self.obj.get(key) {
            Some(v) if !v.is_null() && *v != want => bail!(
                "{}: {key} = {v} is not supported (lmtrain computes {key} = {want})",
                self.origin
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_cfg() -> ModelConfig {
        ModelConfig {
            vocab_size: 50,
            d_model: 16,
            n_layers: 2,
            n_heads: 4,
            context: 32,
            positions: Positions::Rope,
            norm: Norm::RmsNorm,
            mlp: Mlp::SwiGlu,
            bias: false,
            tie_embeddings: false,
            norm_eps: 1e-6,
            rope_theta: 500.0,
            ..ModelConfig::default()
        }
    }

    /// Writing then reading a config.json gives back the architecture (d_ff resolved).
    #[test]
    fn both_layouts_round_trip() {
        for cfg in [
            ModelConfig {
                vocab_size: 50,
                ..ModelConfig::default()
            },
            llama_cfg(),
        ] {
            let layout = Layout::of(&cfg).unwrap();
            let v = to_json(layout, &cfg, &Specials::LMTRAIN);
            let (l, back) = from_json(&v, "config.json").unwrap();
            assert_eq!(l, layout);
            let want = ModelConfig {
                d_ff: cfg.hidden_dim(),
                ..cfg
            };
            assert_eq!(back, want);
        }
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let base = to_json(Layout::Llama, &llama_cfg(), &Specials::LMTRAIN);
        let cases = [
            ("num_key_value_heads", json!(2), "grouped-query"),
            (
                "rope_scaling",
                json!({"rope_type": "linear", "factor": 2.0}),
                "rope_scaling",
            ),
            (
                "rope_parameters",
                json!({"rope_type": "yarn", "rope_theta": 1e4}),
                "rope_parameters",
            ),
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("mlp_bias", json!(true), "mlp_bias"),
            ("model_type", json!("mistral"), "\"mistral\""),
        ];
        for (key, value, needle) in cases {
            let mut v = base.clone();
            v[key] = value;
            let e = from_json(&v, "config.json").unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.starts_with("config.json"),
                "{key}: {e}"
            );
        }
    }
}
