"""The multi-proxy memory (model/memory.py): the vectorised update and rebuild equal plain loops; logits;
checkpointing; and the default update is the authors' sequential rule (cm.py's mean/hard mix), checked against a
loop written from that rule: per sample in batch order, move the identity's mean proxy towards the sample; per
identity, choose the hard sample against the moved mean proxy, then move the mean proxy towards the identity's
batch mean and the hard proxy towards the hard sample."""
import pytest
import torch
import torch.nn.functional as F

from model.memory import MultiProxyMemory


def loop_update(proxies, x_hat, labels, momentum):
    """Obviously-correct oracle: one identity at a time, one sample at a time."""
    new = proxies.clone()
    for c in sorted(set(labels.tolist())):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        mean = sum(x_hat[i] for i in rows) / len(rows)
        mixed = momentum * proxies[c, 0] + (1 - momentum) * mean
        new[c, 0] = mixed / mixed.norm().clamp_min(1e-12)
        if proxies.shape[1] == 2:
            hardest, lowest = None, float("inf")
            for i in rows:
                cosine = float(torch.dot(x_hat[i], proxies[c, 0]))
                if cosine < lowest:
                    hardest, lowest = i, cosine
            mixed = momentum * proxies[c, 1] + (1 - momentum) * x_hat[hardest]
            new[c, 1] = mixed / mixed.norm().clamp_min(1e-12)
    return new


def random_memory(num_classes, dim, num_proxies, seed, update_rule="batch_mean"):
    """A memory with random proxies; the loop oracle above is the "batch_mean" rule (the sequential rule
    of the authors has its own oracle below)."""
    gen = torch.Generator().manual_seed(seed)
    memory = MultiProxyMemory(num_classes, dim, num_proxies=num_proxies, temperature=0.05, momentum=0.3,
                              update_rule=update_rule)
    memory.proxies.copy_(F.normalize(torch.randn(num_classes, num_proxies, dim, generator=gen), dim=2))
    return memory, gen


@pytest.mark.parametrize("num_proxies", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_update_equals_loop_oracle(num_proxies, seed):
    memory, gen = random_memory(num_classes=9, dim=12, num_proxies=num_proxies, seed=seed)
    before = memory.proxies.clone()
    batch = 17
    labels = torch.randint(0, 6, (batch,), generator=gen)      # classes 6..8 absent; unequal counts
    x_hat = F.normalize(torch.randn(batch, 12, generator=gen), dim=1)
    expected = loop_update(before, x_hat, labels, momentum=0.3)
    memory.update(x_hat, labels)
    torch.testing.assert_close(memory.proxies, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(memory.proxies[6:], before[6:], rtol=0, atol=0)


def test_hard_proxy_ties_go_to_the_earliest_sample():
    memory, gen = random_memory(num_classes=2, dim=4, num_proxies=2, seed=3)
    memory.proxies[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    x_hat = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # first two tie at 0
    labels = torch.tensor([0, 0, 0])
    expected = loop_update(memory.proxies.clone(), x_hat, labels, momentum=0.3)
    memory.update(x_hat, labels)
    torch.testing.assert_close(memory.proxies, expected)


def test_update_is_outside_autograd_and_in_place():
    memory, gen = random_memory(num_classes=4, dim=6, num_proxies=2, seed=4)
    x_hat = F.normalize(torch.randn(5, 6, generator=gen), dim=1).requires_grad_(True)
    memory.update(x_hat, torch.tensor([0, 1, 1, 3, 3]))
    assert not memory.proxies.requires_grad and memory.proxies.grad_fn is None


def test_rebuild_sets_every_proxy_to_the_normalised_centroid():
    memory, gen = random_memory(num_classes=5, dim=8, num_proxies=2, seed=5)
    before = memory.proxies.clone()
    labels = torch.tensor([0, 0, 1, 3, 3, 3, 0])                 # classes 2 and 4 have no feature
    feats = F.normalize(torch.randn(7, 8, generator=gen), dim=1)
    memory.rebuild(feats, labels)
    for c in range(5):
        rows = [i for i in range(7) if labels[i] == c]
        if rows:
            centroid = feats[rows].mean(0)
            centroid = centroid / centroid.norm()
            for n in range(2):
                torch.testing.assert_close(memory.proxies[c, n], centroid)
        else:
            torch.testing.assert_close(memory.proxies[c], before[c])


def test_logits_are_cosines_over_temperature_per_proxy_set():
    memory, gen = random_memory(num_classes=3, dim=5, num_proxies=2, seed=6)
    x_hat = F.normalize(torch.randn(4, 5, generator=gen), dim=1)
    logits = memory.logits(x_hat)
    assert logits.shape == (4, 2, 3)
    for n in range(2):
        torch.testing.assert_close(logits[:, n], x_hat @ memory.proxies[:, n].t() / 0.05)


def test_proxies_are_saved_in_the_state_dict():
    memory, _ = random_memory(num_classes=3, dim=5, num_proxies=2, seed=7)
    state = memory.state_dict()
    assert "proxies" in state and state["proxies"].shape == (3, 2, 5)
    fresh = MultiProxyMemory(3, 5)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.proxies, memory.proxies)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="NUM_PROXIES"):
        MultiProxyMemory(3, 5, num_proxies=3)
    memory = MultiProxyMemory(3, 5)
    with pytest.raises(ValueError, match="labels must lie"):
        memory.rebuild(torch.zeros(2, 5), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"features must be \(N, 5\)"):
        memory.update(torch.zeros(2, 4), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- the authors' sequential rule
def move(proxy, target, momentum):
    mixed = momentum * proxy + (1 - momentum) * target
    return mixed / mixed.norm()


def authors_update(proxies, x_hat, labels, momentum):
    mean, hard = proxies[:, 0].clone(), proxies[:, 1].clone()
    for x, y in zip(x_hat, labels.tolist()):           # one sample at a time, in batch order
        mean[y] = move(mean[y], x, momentum)
    groups = {}
    for x, y in zip(x_hat, labels.tolist()):
        groups.setdefault(y, []).append(x)
    for y, feats in groups.items():                     # identities in order of first appearance
        cosines = [float(f @ mean[y]) for f in feats]
        hardest = feats[cosines.index(min(cosines))]    # first of the lowest
        mean[y] = move(mean[y], torch.stack(feats).mean(0), momentum)
        hard[y] = move(hard[y], hardest, momentum)
    return torch.stack([mean, hard], dim=1)


def random_case(seed, num_classes=8, dim=6, batch=16, per_id=4):
    gen = torch.Generator().manual_seed(seed)
    proxies = F.normalize(torch.randn(num_classes, 2, dim, generator=gen), dim=2)
    ids = torch.randperm(num_classes, generator=gen)[: batch // per_id]
    labels = ids.repeat_interleave(per_id)[torch.randperm(batch, generator=gen)]  # P x K, shuffled order
    x_hat = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    return proxies, x_hat, labels


@pytest.mark.parametrize("max_instances", [None, 4])
@pytest.mark.parametrize("seed", range(5))
def test_sequential_update_equals_the_authors_loop(seed, max_instances):
    proxies, x_hat, labels = random_case(seed)
    memory = MultiProxyMemory(8, 6, momentum=0.3, max_instances=max_instances)
    memory.proxies.copy_(proxies)
    memory.update(x_hat, labels)
    torch.testing.assert_close(memory.proxies, authors_update(proxies, x_hat, labels, 0.3), rtol=1e-5, atol=1e-6)


def test_sequential_and_batch_mean_rules_differ():
    proxies, x_hat, labels = random_case(7)
    results = []
    for rule in ("sequential", "batch_mean"):
        memory = MultiProxyMemory(8, 6, momentum=0.3, update_rule=rule)
        memory.proxies.copy_(proxies)
        memory.update(x_hat, labels)
        results.append(memory.proxies.clone())
    assert not torch.allclose(results[0][:, 0], results[1][:, 0], atol=1e-3)


def test_more_samples_than_max_instances_is_an_error_not_a_skipped_move():
    proxies, x_hat, labels = random_case(1, per_id=4)
    memory = MultiProxyMemory(8, 6, momentum=0.3, max_instances=2)
    with pytest.raises(RuntimeError, match="max_instances"):
        memory.update(x_hat, labels)


def test_the_default_config_uses_the_sequential_rule_with_k_per_identity():
    from configs import get_defaults
    from model.build import build_model

    cfg = get_defaults()
    assert cfg.MODEL.MEMORY.UPDATE == "sequential"
    cfg.merge_from_list(["MODEL.BACKBONE", "tiny-vit-16", "MODEL.PRSD.ENABLED", "False", "MODEL.MGTM.ENABLED", "False",
                         "MODEL.EMBED_PARTS", "['cls', 'proj']", "INPUT.SIZE_TRAIN", "[64, 32]",
                         "INPUT.SIZE_TEST", "[64, 32]", "DATALOADER.NUM_INSTANCE", "3"])
    memory = build_model(cfg, num_classes=5, num_cameras=3).memory
    assert memory.update_rule == "sequential" and memory.max_instances == 3
