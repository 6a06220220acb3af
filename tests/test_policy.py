"""The GPT policy: save/load through the Auto classes, cached generation vs full recompute, sampling, errors."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binom
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin

from safetensors import safe_open

from e3d2_hf.models.configuration_policy import PolicyConfig
from e3d2_hf.models.configuration_vqvae import VQVAEConfig
from e3d2_hf.inference import music_to_joints
from e3d2_hf.models import modeling_policy
from e3d2_hf.models.modeling_policy import BAILANDO_RECOMPUTE_STEPS, E3D2PolicyModel, dance_to_inputs, mkl_packed_linears, sliding_window_cache
from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
from e3d2_hf.utils import E3D2Error

CONTEXT = 29
MUSIC_DIM = 438


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_policy(seed: int = 0, **overrides) -> E3D2PolicyModel:
    """A 3-block, 32-wide policy with the paper's context, codebooks and music width.

    initializer_range 0.1 spreads the random logits so that float rounding between code paths
    (~1e-6) stays far below the gap between the best two codes.
    """
    settings = dict(hidden_size=32, num_hidden_layers=3, num_base_layers=2, num_attention_heads=4, intermediate_size=64)
    settings.update(initializer_range=0.1, **overrides)
    torch.manual_seed(seed)
    return E3D2PolicyModel(PolicyConfig(**settings)).eval()


def random_dance(batch: int, steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    music = torch.randn(batch, steps, MUSIC_DIM, generator=generator)
    upper = torch.randint(0, 512, (batch, steps), generator=generator)
    lower = torch.randint(0, 512, (batch, steps), generator=generator)
    return upper, lower, music


def full_forward_greedy(policy: E3D2PolicyModel, dance_tokens: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
    """Greedy choices of ONE forward over the whole dance (banded mask), given the dance's own past."""
    upper, lower = policy.split_pose_tokens(dance_tokens)
    inputs = dance_to_inputs(upper, lower, music)
    with torch.no_grad():
        output = policy(upper_codes=inputs["upper_codes"], lower_codes=inputs["lower_codes"], music_features=inputs["music_features"])
    return policy.join_pose_tokens(output.upper_logits.argmax(-1), output.lower_logits.argmax(-1))


def test_save_load_round_trip_through_auto_classes(tmp_path):
    policy = tiny_policy()
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "e3d2_policy"

    assert isinstance(AutoConfig.from_pretrained(tmp_path), PolicyConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, E3D2PolicyModel) and not loaded.training
    upper, lower, music = random_dance(2, 12)
    inputs = dance_to_inputs(upper, lower, music)
    with torch.no_grad():
        expected, got = policy(**inputs), loaded(**inputs)
    torch.testing.assert_close(got.upper_logits, expected.upper_logits, rtol=0, atol=0)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)


def test_cached_generation_equals_full_banded_forward_beyond_one_window():
    policy = tiny_policy()
    _, _, music = random_dance(3, 71)
    first = torch.tensor([[5 * 512 + 7], [100 * 512 + 3], [511 * 512 + 0]])
    tokens = policy.generate(music, first)  # 70 new steps, more than two context windows
    assert tokens.shape == (3, 71) and torch.equal(tokens[:, :1], first)
    assert len(set(tokens[0].tolist())) > 10  # the dance moves: the comparison below is not trivial
    torch.testing.assert_close(full_forward_greedy(policy, tokens, music), tokens[:, 1:], rtol=0, atol=0)

    # step-by-step cached logits equal the banded full forward's (not only their argmax)
    upper, lower = policy.split_pose_tokens(tokens)
    inputs = dance_to_inputs(upper, lower, music)
    cache, stepwise = DynamicCache(config=policy.config), []
    with torch.no_grad():
        full = policy(upper_codes=inputs["upper_codes"], lower_codes=inputs["lower_codes"], music_features=inputs["music_features"])
        for step in range(70):
            one = policy(
                upper_codes=inputs["upper_codes"][:, step : step + 1],
                lower_codes=inputs["lower_codes"][:, step : step + 1],
                music_features=inputs["music_features"][:, step : step + 1],
                past_key_values=cache,
            )
            stepwise.append(one.lower_logits)
    torch.testing.assert_close(torch.cat(stepwise, 1), full.lower_logits, rtol=1e-4, atol=1e-5)
    assert cache.layers[0].keys.shape[-2] == CONTEXT - 1  # the cache rolled instead of growing


def test_preallocated_window_cache_equals_transformers_sliding_cache_bit_for_bit():
    """Chunks of 1 step (generation), several, and longer than the buffer: the same logits to the bit as DynamicCache."""
    policy = tiny_policy()
    chunks = [1] * 130 + [3, 40, 1, 200, 2, 1]  # 130 single steps wrap the 4-window buffer; 200 outgrows it
    upper, lower, music = random_dance(2, sum(chunks))
    theirs, ours, start = DynamicCache(config=policy.config), sliding_window_cache(policy.config), 0
    with torch.no_grad():
        for steps in chunks:
            chunk = {"upper_codes": upper[:, start : start + steps], "lower_codes": lower[:, start : start + steps],
                     "music_features": music[:, start : start + steps]}  # fmt: skip
            expected = policy(**chunk, past_key_values=theirs).upper_logits
            assert torch.equal(policy(**chunk, past_key_values=ours).upper_logits, expected), f"steps {start}..{start + steps}"
            start += steps
    assert ours.get_seq_length() == sum(chunks) and ours.layers[0].get_mask_sizes(1) == theirs.layers[0].get_mask_sizes(1)
    assert ours.layers[0].capacity > 4 * CONTEXT  # the long chunk grew the buffer


@pytest.mark.skipif(not hasattr(torch.ops.mkl, "_mkl_linear"), reason="this torch has no MKL packed linear")
def test_mkl_packed_linears_keep_the_plain_results_and_generation_tokens():
    policy = tiny_policy()
    layer, inputs = policy.layers[0].mlp[0], torch.randn(3, 1, 32)
    plain = layer(inputs)
    with mkl_packed_linears(policy, rows=3):
        assert "forward" in vars(layer)  # the packed GEMM is in use
        torch.testing.assert_close(layer(inputs), plain)
    assert "forward" not in vars(layer)  # nn.Linear's own forward again
    _, _, music = random_dance(3, 71)
    first = torch.tensor([[5], [70000], [262143]])
    with mock.patch.object(modeling_policy, "mkl_packed_linears", lambda module, rows: contextlib.nullcontext()):
        unpacked = policy.generate(music, first)
    assert torch.equal(policy.generate(music, first), unpacked)
    with torch.autocast("cpu", dtype=torch.bfloat16), mkl_packed_linears(policy, rows=3):
        assert "forward" not in vars(layer)  # autocast casts only its own ops' inputs
    for untouched in (policy.train(), policy.eval().to(torch.bfloat16)):  # dropout / bf16 weights: plain linears
        with mkl_packed_linears(untouched, rows=3):
            assert "forward" not in vars(layer)


def test_recompute_window_equals_cache_inside_first_window_only():
    policy = tiny_policy()
    _, _, music = random_dance(2, 71)
    first = torch.tensor([[3], [77]])
    cached = policy.generate(music, first)
    recomputed = policy.generate(music, first, strategy="recompute_window")
    # inside the first window (tokens 1..29 are chosen from at most 29 steps of context) they agree exactly
    torch.testing.assert_close(recomputed[:, : CONTEXT + 1], cached[:, : CONTEXT + 1], rtol=0, atol=0)
    # beyond it the two strategies are different models of the past: their logits part
    upper, lower = policy.split_pose_tokens(cached)
    with torch.no_grad():
        window = policy(upper_codes=upper[:, 31:60], lower_codes=lower[:, 31:60], music_features=music[:, 32:61])
        banded = policy(upper_codes=upper[:, :60], lower_codes=lower[:, :60], music_features=music[:, 1:61])
    assert (window.upper_logits[:, -1] - banded.upper_logits[:, -1]).abs().max() > 1e-3


def test_recompute_steps_slides_bailandos_28_step_window_exactly():
    policy = tiny_policy()
    _, _, music = random_dance(2, 71)
    first = torch.tensor([[3], [77]])
    default = policy.generate(music, first, strategy="recompute_window")
    assert torch.equal(policy.generate(music, first, strategy="recompute_window", recompute_steps=CONTEXT), default)
    bailando = policy.generate(music, first, strategy="recompute_window", recompute_steps=BAILANDO_RECOMPUTE_STEPS)
    # the first 28 chosen steps see at most 28 steps of the past, with either window
    torch.testing.assert_close(bailando[:, :BAILANDO_RECOMPUTE_STEPS + 1], default[:, :BAILANDO_RECOMPUTE_STEPS + 1], rtol=0, atol=0)
    # every later step is the greedy choice of one forward over exactly the 28 steps before it (music one frame ahead)
    upper, lower = policy.split_pose_tokens(bailando)
    with torch.no_grad():
        for step in range(BAILANDO_RECOMPUTE_STEPS + 1, 71):
            first_step = step - BAILANDO_RECOMPUTE_STEPS
            out = policy(
                upper_codes=upper[:, first_step:step], lower_codes=lower[:, first_step:step], music_features=music[:, first_step + 1 : step + 1]
            )
            assert torch.equal(out.upper_logits[:, -1].argmax(-1), upper[:, step]) and torch.equal(out.lower_logits[:, -1].argmax(-1), lower[:, step])
        # a 29-step window scores that dance's step 29 differently: the option changes what is computed
        wider = policy(upper_codes=upper[:, :29], lower_codes=lower[:, :29], music_features=music[:, 1:30])
        narrower = policy(upper_codes=upper[:, 1:29], lower_codes=lower[:, 1:29], music_features=music[:, 2:30])
    assert (wider.upper_logits[:, -1] - narrower.upper_logits[:, -1]).abs().max() > 1e-3
    for steps, strategy in ((0, "recompute_window"), (CONTEXT + 1, "recompute_window"), (BAILANDO_RECOMPUTE_STEPS, "cache")):
        with pytest.raises(E3D2Error, match="recompute_steps"):
            policy.generate(music, first, strategy=strategy, recompute_steps=steps)


def test_batched_generation_equals_one_dance_at_a_time():
    policy = tiny_policy()
    upper, lower, music = random_dance(3, 40)
    batched = policy.generate(music, upper_codes=upper[:, :2], lower_codes=lower[:, :2], max_new_tokens=35)
    assert batched.shape == (3, 37)
    for index in range(3):
        alone = policy.generate(music[index : index + 1], upper_codes=upper[index : index + 1, :2], lower_codes=lower[index : index + 1, :2], max_new_tokens=35)
        torch.testing.assert_close(alone[0], batched[index], rtol=0, atol=0)


def test_transformers_generation_loop_matches_ours():
    policy = tiny_policy()
    _, _, music = random_dance(2, 45)
    first = torch.tensor([[1234], [99999]])
    ours = policy.generate(music, first)
    theirs = GenerationMixin.generate(policy, input_ids=first, music_features=music, max_new_tokens=44, do_sample=False)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    policy = tiny_policy()
    _, _, music = random_dance(4, 40)
    first = torch.arange(4)[:, None]
    one = policy.generate(music, first, do_sample=True, temperature=1.3, top_k=50, seed=7)
    again = policy.generate(music, first, do_sample=True, temperature=1.3, top_k=50, seed=7)
    other = policy.generate(music, first, do_sample=True, temperature=1.3, top_k=50, seed=8)
    torch.testing.assert_close(again, one, rtol=0, atol=0)
    assert not torch.equal(other, one)
    greedy = policy.generate(music, first)
    assert not torch.equal(one, greedy)
    torch.testing.assert_close(policy.generate(music, first, do_sample=True, top_k=1, seed=3), greedy, rtol=0, atol=0)
    # within the first window the re-encoding strategy draws the same samples from the same seed
    windowed = policy.generate(music[:, :30], first, do_sample=True, top_k=50, seed=7, strategy="recompute_window")
    torch.testing.assert_close(windowed, policy.generate(music[:, :30], first, do_sample=True, top_k=50, seed=7), rtol=0, atol=0)


def test_top_k_restricts_each_half_to_its_best_codes():
    policy = tiny_policy()
    _, _, music = random_dance(64, 2)
    first = torch.full((64, 1), 4242)
    upper, lower = policy.split_pose_tokens(policy.generate(music, first, do_sample=True, top_k=3, seed=0)[:, 1])
    with torch.no_grad():
        output = policy(input_ids=first, music_features=music[:, 1:2])
    assert set(upper.tolist()) <= set(output.upper_logits[:, 0].topk(3, -1).indices.flatten().tolist())
    for row in range(64):
        assert lower[row] in output.lower_logits[row, 0].topk(3).indices


def test_noise_level_one_is_the_uniform_random_policy():
    _, _, music = random_dance(2, 30)
    first = torch.tensor([[0], [1]])
    noisy_a = tiny_policy(seed=0).generate(music, first, noise_level=1.0, seed=11)
    noisy_b = tiny_policy(seed=5).generate(music, first, noise_level=1.0, seed=11)
    torch.testing.assert_close(noisy_a, noisy_b, rtol=0, atol=0)  # every action replaced: the model does not matter
    policy = tiny_policy()
    assert not torch.equal(noisy_a, policy.generate(music, first))
    torch.testing.assert_close(policy.generate(music, first, noise_level=0.0, seed=11), policy.generate(music, first), rtol=0, atol=0)


def test_eps_greedy_replaces_whole_actions_with_one_coin_per_step():
    """At eps = 0.5 half the steps, not 75%, carry noise, and a noisy step has both its codes replaced."""
    greedy_upper, greedy_lower, eps, codebook = 3, 7, 0.5, 512
    policy = tiny_policy()
    with torch.no_grad():  # whatever it sees, the policy's greedy action is (3, 7)
        policy.final_norm.weight.zero_()
        policy.final_norm.bias.zero_()
        policy.final_norm.bias[0] = 1.0
        for head, code in ((policy.upper_head, greedy_upper), (policy.lower_head, greedy_lower)):
            head.weight.zero_()
            head.weight[code, 0] = 1.0
    _, _, music = random_dance(64, 64)
    first = torch.zeros(64, 1, dtype=torch.long)
    tokens = policy.generate(music, first, noise_level=eps, seed=3)
    torch.testing.assert_close(tokens, policy.generate(music, first, noise_level=eps, seed=3), rtol=0, atol=0)
    upper, lower = policy.split_pose_tokens(tokens[:, 1:])
    off_upper, off_lower = (upper != greedy_upper).flatten().numpy(), (lower != greedy_lower).flatten().numpy()
    steps = off_upper.size
    # A replaced code equals the greedy one w.p. 1/512: a replaced step shows as off the policy unless both coincide.
    shown = eps * (1 - 1 / codebook**2)
    assert abs(np.mean(off_upper | off_lower) - shown) <= 4 * np.sqrt(shown * (1 - shown) / steps)
    # Exactly one half off only when the other's uniform code coincided (one coin per half: ~37% of the steps).
    one_half_only = eps * 2 * (1 / codebook) * (1 - 1 / codebook)
    assert np.sum(off_upper != off_lower) <= binom.isf(1e-6, steps, one_half_only)


def test_loss_log_probs_and_base_head_split_agree():
    policy = tiny_policy()
    upper, lower, music = random_dance(2, 30)
    inputs = dance_to_inputs(upper, lower, music)
    with torch.no_grad():
        output = policy(**inputs, output_hidden_states=True)
        stats = policy.log_probs(upper, lower, music)
        base = policy.base_hidden_states(music[:, 1:30], upper_codes=upper[:, :-1], lower_codes=lower[:, :-1])
        upper_from_base, lower_from_base = policy.logits_from_base(base)
        joint = policy(input_ids=policy.join_pose_tokens(upper[:, :-1], lower[:, :-1]), music_features=music[:, 1:30],
                       labels=policy.join_pose_tokens(upper[:, 1:], lower[:, 1:]))
    expected_loss = F.cross_entropy(output.upper_logits.flatten(0, 1), upper[:, 1:].flatten()) + F.cross_entropy(
        output.lower_logits.flatten(0, 1), lower[:, 1:].flatten()
    )
    torch.testing.assert_close(output.loss, expected_loss)
    torch.testing.assert_close(joint.loss, expected_loss)
    padded_labels = policy.join_pose_tokens(upper[:, 1:], lower[:, 1:])
    padded_labels[:, 20:] = -100  # ignored steps, e.g. right padding
    with torch.no_grad():
        padded = policy(upper_codes=upper[:, :-1], lower_codes=lower[:, :-1], music_features=music[:, 1:30], labels=padded_labels)
    torch.testing.assert_close(
        padded.loss,
        F.cross_entropy(output.upper_logits[:, :20].flatten(0, 1), upper[:, 1:21].flatten())
        + F.cross_entropy(output.lower_logits[:, :20].flatten(0, 1), lower[:, 1:21].flatten()),
    )
    assert len(output.hidden_states) == 4
    torch.testing.assert_close(base, output.hidden_states[policy.config.num_base_layers])
    torch.testing.assert_close(upper_from_base, output.upper_logits)
    torch.testing.assert_close(lower_from_base, output.lower_logits)
    assert stats.log_probs.shape == (2, 29)
    torch.testing.assert_close(-(stats.log_probs.mean()), expected_loss)
    assert torch.all(stats.entropy > 0) and torch.all(stats.entropy <= 2 * torch.log(torch.tensor(512.0)) + 1e-4)


def test_training_steps_fit_one_batch():
    policy = tiny_policy(embedding_dropout=0.0, residual_dropout=0.0, attention_dropout=0.0).train()
    upper, lower, music = random_dance(4, 30)
    inputs = dance_to_inputs(upper, lower, music)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    first_loss = None
    for _ in range(40):
        loss = policy(**inputs).loss
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25 * first_loss


def test_bfloat16_weights_choose_float32s_greedy_codes_inside_the_first_window():
    """bf16 weights (for CPUs and GPUs with bf16 matmuls) keep fp32's greedy dance through the first window.

    bf16 keeps 8 mantissa bits: on a random tiny policy the best two of 512 logits are often closer
    than that rounding (about 4% of greedy codes differ there, and each difference changes the rest
    of the dance). A policy that has learnt something has clear winners, so this one is first
    trained 20 Adam steps on the dance it then generates to.
    """
    policy = tiny_policy(embedding_dropout=0.0, residual_dropout=0.0, attention_dropout=0.0).train()
    upper, lower, music = random_dance(4, CONTEXT + 1, seed=10)
    inputs = dance_to_inputs(upper, lower, music)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(20):
        loss = policy(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    first = policy.join_pose_tokens(upper[:, :1], lower[:, :1])
    float_tokens = policy.generate(music, first)
    with torch.no_grad():
        float_logits = policy(**{name: inputs[name] for name in ("upper_codes", "lower_codes", "music_features")}).upper_logits
    policy.to(torch.bfloat16)
    bfloat_tokens = policy.generate(music, first)
    with torch.no_grad():
        bfloat_logits = policy(**{name: inputs[name] for name in ("upper_codes", "lower_codes", "music_features")}).upper_logits
    assert bfloat_logits.dtype == torch.bfloat16 and (bfloat_logits.float() - float_logits).abs().max() > 1e-3  # it did round
    assert len(set(float_tokens[0].tolist())) > 10  # a moving dance, not one repeated code
    torch.testing.assert_close(bfloat_tokens, float_tokens, rtol=0, atol=0)


def test_bad_input_raises_clear_errors():
    policy = tiny_policy()
    upper, lower, music = random_dance(2, 31)
    with pytest.raises(E3D2Error, match="438"):
        policy(upper_codes=upper[:, :5], lower_codes=lower[:, :5], music_features=music[:, :5, :437])
    with pytest.raises(E3D2Error, match="438"):
        policy.generate(torch.randn(2, 10, 128), upper_codes=upper[:, :1], lower_codes=lower[:, :1])
    with pytest.raises(E3D2Error, match="longer than the policy's context of 29"):
        policy(**dance_to_inputs(upper, lower, music))  # a 30-step training window
    with pytest.raises(E3D2Error, match=r"\[0, 512\)"):
        policy(upper_codes=upper[:, :3] + 512, lower_codes=lower[:, :3], music_features=music[:, :3])
    bad_labels = dance_to_inputs(upper[:, :10], lower[:, :10], music)
    bad_labels["lower_labels"] = bad_labels["lower_labels"] + 600
    with pytest.raises(E3D2Error, match="lower_labels: codes must lie in"):
        policy(**bad_labels)
    with pytest.raises(E3D2Error, match="new steps"):
        policy.generate(music, upper_codes=upper[:, :1], lower_codes=lower[:, :1], max_new_tokens=31)
    with pytest.raises(E3D2Error, match="one frame per pose token"):
        policy(upper_codes=upper[:, :4], lower_codes=lower[:, :4], music_features=music[:, :5])


def tiny_vqvae(codebook_size: int = 512) -> E3D2VQVAE:
    torch.manual_seed(0)
    return E3D2VQVAE(VQVAEConfig(channels=8, codebook_dim=8, residual_depth=1, codebook_size=codebook_size)).eval()


def test_vqvae_travels_with_the_policy_folder(tmp_path):
    policy, vqvae = tiny_policy(), tiny_vqvae()
    policy.attach_vqvae(vqvae)
    policy.save_pretrained(tmp_path / "bc")
    assert (tmp_path / "bc" / "vqvae" / "config.json").is_file()
    with safe_open(tmp_path / "bc" / "model.safetensors", "pt") as weights:  # the VQ-VAE is not part of the policy
        assert set(weights.keys()) == set(policy.state_dict())

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bc")
    assert loaded.vqvae is None  # loaded lazily
    loaded_vqvae = loaded.load_vqvae()
    assert isinstance(loaded_vqvae, E3D2VQVAE) and loaded.vqvae is loaded_vqvae
    torch.testing.assert_close(loaded_vqvae.state_dict(), vqvae.state_dict(), rtol=0, atol=0)

    # re-saving a policy whose VQ-VAE was never loaded (e.g. after PPO) still carries it along
    AutoModelForCausalLM.from_pretrained(tmp_path / "bc").save_pretrained(tmp_path / "ppo")
    assert (tmp_path / "ppo" / "vqvae" / "model.safetensors").is_file()


def test_music_to_joints_decodes_the_generated_codes(tmp_path):
    policy = tiny_policy()
    policy.attach_vqvae(tiny_vqvae())
    policy.save_pretrained(tmp_path)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path)
    music = np.random.default_rng(0).standard_normal((40, MUSIC_DIM)).astype(np.float32)
    joints = music_to_joints(policy, music, first_codes=(3, 400))
    assert joints.shape == (40 * 8, 24, 3) and joints.dtype == np.float32
    tokens = policy.generate(torch.from_numpy(music)[None], upper_codes=torch.tensor([[3]]), lower_codes=torch.tensor([[400]]))
    expected = policy.vqvae.decode(*policy.split_pose_tokens(tokens))[0].numpy()
    np.testing.assert_array_equal(joints, expected)

    seed_motion = np.zeros((2, 16, 24, 3), dtype=np.float32)
    seed_motion[:, :, :, 0] = np.array([1.0, -2.0])[:, None, None]  # the dances start where the seeds stand
    batch = music_to_joints(policy, np.stack([music, music]), seed_motion=seed_motion, max_new_tokens=9)
    assert batch.shape == (2, 80, 24, 3)
    np.testing.assert_allclose(batch[:, 0, 0], seed_motion[:, 0, 0], atol=1e-6)
    with pytest.raises(E3D2Error, match="exactly one"):
        music_to_joints(policy, music)


def test_missing_or_mismatched_vqvae_is_a_clear_error(tmp_path):
    policy = tiny_policy()
    policy.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(E3D2Error, match=f"policy at {tmp_path} has no VQ-VAE \\(expected {tmp_path}/vqvae\\)"):
        loaded.load_vqvae()
    with pytest.raises(E3D2Error, match="no VQ-VAE"):
        music_to_joints(loaded, np.zeros((10, MUSIC_DIM), np.float32), first_codes=(0, 0))
    with pytest.raises(E3D2Error, match="256 codes per half"):
        policy.attach_vqvae(tiny_vqvae(codebook_size=256))
