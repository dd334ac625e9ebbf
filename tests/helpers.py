"""Assertions shared by the CLI tests (imported as `helpers`: pytest puts tests/ on sys.path)."""


def one_error_line(result, *needles: str) -> str:
    """A user error: exit status 2, no traceback, one 'error:' line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def routed_at_median(model, images):
    """Route a batch at its median difficulty, and run each image alone on the route the batch
    gave it: (mixed, alone, phi, tau), for the mixed-batch tests of every family. The routes
    must mix: a batch that went all one way tests nothing."""
    import torch  # here, so that the CLI helpers above import nothing heavy

    with torch.no_grad():
        phi = torch.stack([r["difficulty"] for r in model.detect(images, route="easy")])  # B
        tau = float(phi.median())
        mixed = model.detect(images, route=tau)
        alone = [model.detect([img], route="hard" if p > tau else "easy")[0] for img, p in zip(images, phi)]
    routes = [r["route"] for r in mixed]
    assert routes == ["hard" if p > tau else "easy" for p in phi.tolist()]
    assert set(routes) == {"easy", "hard"}
    assert [r["route"] for r in alone] == routes
    return mixed, alone, phi, tau
