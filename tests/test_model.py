"""The OminiX decoder is transformers' LlamaForCausalLM: same names, same logits, same cache semantics."""

from __future__ import annotations

import pytest
import torch

from ominix.config import ModelConfig
from ominix.model import KVCache, LlamaForCausalLM, build_model, hf_config, rms_normalize
from ominix.plugins import PLUGINS

SHAPES = {
    "gqa": ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attn="sdpa"),
    "mha-tied": ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=True,
                            rope_theta=500000.0, attn="sdpa"),
}


def _pair(cfg: ModelConfig):
    from transformers import LlamaForCausalLM as HFLlama

    ours = build_model(cfg, seed=0).eval()
    theirs = HFLlama(hf_config(cfg, attn_implementation="eager")).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected
    # a tied head is saved once, under the embedding's name (as transformers saves it)
    assert all("rotary" in k or (cfg.tie_word_embeddings and k == "lm_head.weight") for k in missing)
    return ours, theirs


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parameter_names_match_transformers(shape: str) -> None:
    from transformers import LlamaForCausalLM as HFLlama

    cfg = SHAPES[shape]
    ours = set(build_model(cfg).state_dict())
    theirs = set(HFLlama(hf_config(cfg)).state_dict())
    if cfg.tie_word_embeddings:  # the shared tensor once, as save_pretrained writes it
        theirs.discard("lm_head.weight")
    assert ours == theirs


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_transformers(shape: str) -> None:
    cfg = SHAPES[shape]
    ours, theirs = _pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(ids).logits
        b = theirs(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_loss_is_shifted_cross_entropy_like_transformers() -> None:
    cfg = SHAPES["gqa"]
    ours, theirs = _pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours_loss = ours(ids[:, :-1], labels=ids[:, 1:]).loss
        hf_loss = theirs(ids, labels=ids).loss  # transformers shifts inside
    torch.testing.assert_close(ours_loss, hf_loss, rtol=1e-5, atol=1e-6)


def test_kv_cache_decoding_equals_full_forward() -> None:
    cfg = SHAPES["gqa"]
    model = build_model(cfg, seed=3).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(cfg, batch=1, max_len=16, device="cpu", dtype=torch.float32)
        prefill = model(ids[:, :6], cache=cache).logits
        chunk = model(ids[:, 6:8], cache=cache).logits  # several new tokens over a filled cache
        steps = [model(ids[:, i : i + 1], cache=cache).logits for i in (8, 9)]
    torch.testing.assert_close(torch.cat([prefill, chunk, *steps], dim=1), full, rtol=1e-5, atol=1e-5)


def test_activation_recompute_gives_same_gradients() -> None:
    """Full and selective activation recompute give the gradients of no recompute; full runs every
    matmul of a layer again in backward, selective keeps their outputs and runs none again."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                                   torch.ops.aten.bmm.default)
            return func(*args, **(kwargs or {}))

    cfg = SHAPES["gqa"]
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    grads, matmuls = {}, {}
    for name, update in [("none", {"recompute_activations": False}),
                         ("full", {"recompute_activations": True}),
                         ("selective", {"recompute_activations": True, "recompute_policy": "selective"})]:
        model = build_model(cfg.model_copy(update=update), seed=6).train()
        with CountMatmuls() as counter:
            model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        matmuls[name] = counter.count
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name in ("full", "selective"):
        for n, g in grads["none"].items():
            torch.testing.assert_close(grads[name][n], g, msg=f"{name}: {n}")
    assert matmuls["full"] >= matmuls["none"] + 6 * cfg.num_hidden_layers  # the layers' projections again
    assert matmuls["selective"] == matmuls["none"]


def test_meta_build_initialises_every_parameter() -> None:
    model = build_model(SHAPES["gqa"], seed=7)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.device.type == "cpu"
    assert isinstance(model, LlamaForCausalLM)
    assert torch.all(model.model.norm.weight == 1)


@pytest.mark.parametrize("chunk", [5, 7, 64])
def test_chunked_loss_equals_plain_cross_entropy(chunk: int) -> None:
    cfg = SHAPES["gqa"]
    ids = torch.randint(0, cfg.vocab_size, (2, 13), generator=torch.Generator().manual_seed(8))
    labels = ids[:, 1:].clone()
    labels[0, :3] = -100  # ignored positions (e.g. padding) count in neither
    results = []
    for loss_chunk in (0, chunk):
        model = build_model(cfg.model_copy(update={"loss_chunk": loss_chunk}), seed=9).train()
        loss = model(ids[:, :-1], labels=labels).loss
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone(), model.model.embed_tokens.weight.grad.clone()))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _largest_logits(run, vocab: int, hidden: int) -> int:
    """Rows of the largest fp32 [rows, vocab] tensor any op makes while ``run()`` runs (but the
    [hidden, vocab] of the lm_head's transposed weight gradient)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        rows = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == vocab \
                        and t.dtype == torch.float32 and t.shape[0] != hidden:
                    Shapes.rows = max(Shapes.rows, t.shape[0])
            return out

    with Shapes():
        run()
    return Shapes.rows


def test_chunked_loss_under_hooked_parameters() -> None:
    """With the lm_head weight a ColossalAI ColoParameter whose op hooks Gemini drives, the loss is
    still chunked (one chunk's fp32 logits at a time, forward and backward), the hooks see every
    use of the weight, its gradient arrives after its post-backward hook, and loss and gradients
    equal the plain cross-entropy's."""
    from colossalai.tensor.colo_parameter import ColoParameter
    from colossalai.tensor.param_op_hook import ColoParamOpHook, ColoParamOpHookManager

    class Recorder(ColoParamOpHook):
        def __init__(self, weight) -> None:
            self.weight, self.calls, self.done = weight, [], False

        def _seen(self, kind, params):
            if any(p is self.weight for p in params):
                self.calls.append(kind)
                self.done = self.done or kind == "post_backward"

        def pre_forward(self, params): self._seen("pre_forward", params)
        def post_forward(self, params): self._seen("post_forward", params)
        def pre_backward(self, params): self._seen("pre_backward", params)
        def post_backward(self, params): self._seen("post_backward", params)

    cfg, chunk = SHAPES["gqa"], 8
    ids = torch.randint(0, cfg.vocab_size, (2, 25), generator=torch.Generator().manual_seed(5))
    tokens = ids[:, :-1].numel()
    plain = build_model(cfg.model_copy(update={"loss_chunk": 0}), seed=2).train()
    hooked = build_model(cfg.model_copy(update={"loss_chunk": chunk}), seed=2).train()
    weight = ColoParameter(hooked.lm_head.weight.data.clone(), requires_grad=True)
    hooked.lm_head._parameters["weight"] = weight
    recorder, late = Recorder(weight), []
    weight.register_hook(lambda g: late.append(g) if not recorder.done else None)
    expected = plain(ids[:, :-1], labels=ids[:, 1:]).loss
    expected.backward()

    def step():
        with ColoParamOpHookManager.use_hooks(recorder):
            loss = hooked(ids[:, :-1], labels=ids[:, 1:]).loss
            # what ColoTensor's backward does (a plain view, out of its torch-function context), without
            # its re-entry into the dispatch mode below
            loss.as_subclass(torch.Tensor).backward()
        torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)

    assert _largest_logits(step, cfg.vocab_size, cfg.hidden_size) == chunk  # whole: 48 rows
    chunks = -(-tokens // chunk)
    assert recorder.calls.count("pre_forward") == 2 * chunks  # forward, then the recompute in backward
    assert recorder.calls.count("post_backward") == chunks and not late
    torch.testing.assert_close(weight.grad, plain.lm_head.weight.grad, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(plain.model.named_parameters(), hooked.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("scope, wrapped", [("ops", False), ("layers", False), ("auto", True)])
def test_compiled_model_matches_eager(scope: str, wrapped: bool) -> None:
    """Both compile scopes (and, under a parameter-wrapping plugin, the hooked layer regions) give
    the eager loss and gradients; inductor runs on the CPU too."""
    cfg = SHAPES["gqa"].model_copy(update={"recompute_activations": True})
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    out = []
    for compiled in (False, True):
        c = cfg.model_copy(update={"compile": compiled, "compile_scope": scope})
        model = build_model(c, seed=4, wrapped_params=wrapped).train()
        loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        loss.backward()
        out.append((loss.detach(), model.model.layers[1].self_attn.q_proj.weight.grad.clone(),
                    model.model.norm.weight.grad.clone()))
    assert (model.ops.rms is not rms_normalize) == (scope == "ops")  # ops: the shared kernels swapped
    assert (model.model.run_layer is not None) == wrapped  # hooked regions only for wrapped parameters
    for eager, fused in zip(*out):
        torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)


def test_plain_keeps_autograd_of_tensor_subclasses() -> None:
    """Compiled kernels get plain tensors; the subclass activations of ColossalAI's Gemini
    (ColoTensor) keep their autograd graph through the unwrapping."""
    from colossalai.tensor.colo_tensor import ColoTensor

    from ominix.compiled_gemini import plain as _plain

    x = torch.randn(3, 4, requires_grad=True)
    y = (x * 2).as_subclass(ColoTensor)
    z = _plain(y)
    assert type(z) is torch.Tensor
    z.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", [False, True])
def test_hooked_compiled_layers_fire_parameter_hooks(ckpt: bool) -> None:
    """Under a plugin whose parameters are ColossalAI ColoParameters with op hooks (Gemini), the
    compiled layer region calls the hooks for each layer's parameters in forward and backward
    (recompute included) and gives the eager loss and gradients."""
    from colossalai.tensor.colo_parameter import ColoParameter
    from colossalai.tensor.param_op_hook import ColoParamOpHook, ColoParamOpHookManager

    from ominix.compiled_gemini import compile_hooked_layers

    class Recorder(ColoParamOpHook):
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []
            self.done: set[int] = set()  # parameters whose post-backward hook has run

        def pre_forward(self, params): self.calls.append(("pre_forward", len(params)))
        def post_forward(self, params): self.calls.append(("post_forward", len(params)))
        def pre_backward(self, params): self.calls.append(("pre_backward", len(params)))

        def post_backward(self, params):
            self.calls.append(("post_backward", len(params)))
            self.done.update(id(p) for p in params)

    cfg = SHAPES["gqa"].model_copy(update={"recompute_activations": ckpt})
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    eager = build_model(cfg, seed=4).train()
    hooked = build_model(cfg, seed=4).train()
    for module in hooked.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = ColoParameter(p.data.clone(), requires_grad=True)
    compile_hooked_layers(hooked)
    recorder = Recorder()
    late = []  # Gemini reduces a gradient only after the parameter's post-backward hook

    for p in hooked.model.layers.parameters():
        p.register_hook(lambda g, p=p: late.append(p) if id(p) not in recorder.done else None)
    eager(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
    with ColoParamOpHookManager.use_hooks(recorder):  # Gemini holds its hooks in backward too
        hooked(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
    per_layer = 9  # 4 attention + 3 MLP projections + 2 norms: one hook call for all of them
    layers = cfg.num_hidden_layers
    count = {kind: recorder.calls.count((kind, per_layer))
             for kind in ("pre_forward", "post_forward", "pre_backward", "post_backward")}
    # a checkpointed layer runs forward again in backward (torch stops that recompute as soon as the
    # saved tensors are back, so its closing post_forward may not come)
    assert count["pre_forward"] == layers * (2 if ckpt else 1)
    assert count["post_forward"] >= layers and count["pre_backward"] == count["post_backward"] == layers
    assert not late
    for (name, a), b in zip(eager.named_parameters(), hooked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_hooked_layers_refuse_a_colossalai_whose_hook_calls_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooked regions mirror ColossalAI 0.5.0's parameter-hook protocol: a ColossalAI whose
    hook calls take other parameters is refused with a hint, when the path is used."""
    from colossalai.tensor.param_op_hook import ColoParamOpHookManager

    from ominix.compiled_gemini import compile_hooked_layers
    from ominix.errors import OminixError

    monkeypatch.setattr(ColoParamOpHookManager, "pre_op", staticmethod(lambda params, x: x))
    with pytest.raises(OminixError, match=r"ColoParamOpHookManager.pre_op is \(params, x\), "
                                          r"not \(params, \*args\)") as err:
        compile_hooked_layers(build_model(SHAPES["gqa"], seed=0))
    assert "colossalai==0.5.0" in err.value.hint and "compile_scope=ops" in err.value.hint


@pytest.mark.usefixtures("private_netns")
@pytest.mark.parametrize("plugin", [p.name for p in PLUGINS.values() if not p.gpu_only and not p.hf_model])
def test_chunked_loss_is_used_under_each_cpu_plugin(plugin: str) -> None:
    """Through the real booster of every plugin that trains this decoder on a CPU, a step holds
    one chunk's fp32 logits at a time (Gemini's hooked weights: the test above and tests/gpu/)."""
    import contextlib

    from ominix.config import load_config
    from ominix.train import colossalai_patches
    from ominix.train.engine import build_engine, init_distributed, one_process_env

    cfg = load_config("tiny", ["model.loss_chunk=100", "schedule.micro_batch_size=2",
                               "schedule.global_batch_size=2", "data.seq_len=64"], {"parallel.plugin": plugin})
    with contextlib.ExitStack() as run:
        run.enter_context(one_process_env())
        run.enter_context(colossalai_patches.patched())
        init_distributed(seed=0)
        run.callback(torch.distributed.destroy_process_group)
        engine = build_engine(cfg, lambda step: 1.0)
        block = torch.randint(0, cfg.model.vocab_size, (2, cfg.data.seq_len + 1))

        def step():
            with engine.autocast():
                loss = engine.loss(block)
            engine.booster.backward(loss, engine.optimizer)

        rows = _largest_logits(step, cfg.model.vocab_size, cfg.model.hidden_size)
    assert rows == 100  # of 128 tokens: chunks of 100 and 28


def test_compile_auto_compiles_with_cuda_only() -> None:
    from ominix import compiled

    cfg = SHAPES["gqa"].model_copy(update={"compile": "auto"})
    assert compiled.scope(cfg, wrapped_params=False, cuda=False) is None  # the CPU trains eager
    assert compiled.scope(cfg, wrapped_params=False, cuda=True) == "layers"
    assert compiled.scope(cfg, wrapped_params=True, cuda=True) == "hooked"
    assert build_model(cfg, seed=1).model.layers[0]._compiled_call_impl is None  # built on the CPU


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_compile_that_fails_falls_back_to_eager_with_one_notice(
        wrapped: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A compiler that fails on the first call (no toolchain on a node) leaves the model training
    eager, with the eager loss and gradients, and says so once."""
    import logging

    import torch._inductor.compile_fx as inductor

    from ominix import eager_fallback

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(inductor, "compile_fx", broken)
    monkeypatch.setattr(eager_fallback, "_failed", [])
    torch._dynamo.reset()
    cfg = SHAPES["gqa"]
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    eager = build_model(cfg, seed=4).train()
    fallen = build_model(cfg.model_copy(update={"compile": True}), seed=4, wrapped_params=wrapped).train()
    with caplog.at_level(logging.WARNING, logger="ominix"):
        losses = [m(ids[:, :-1], labels=ids[:, 1:]).loss for m in (eager, fallen)]
        fallen(ids[:, :-1], labels=ids[:, 1:])  # a second step: no second notice
    for loss in losses:
        loss.backward()
    assert torch.equal(losses[1], losses[0])
    torch.testing.assert_close(fallen.model.layers[1].mlp.up_proj.weight.grad,
                               eager.model.layers[1].mlp.up_proj.weight.grad, rtol=0, atol=0)
    notices = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(notices) == 1 and "no C++ compiler found" in notices[0]
    torch._dynamo.reset()
