"""The metric of a policy: the task's `evaluate_subset` on the dense twin set to the policy's rank-r
approximations, and an on-disk cache of policy -> metrics.

The cache is JSON lines, appended and flushed to disk per evaluation; a torn last line (kill -9
while writing) is ignored on load, so no finished evaluation is ever lost or repeated.
"""
import json
import os
from pathlib import Path


def policy_key(policy):
    return json.dumps({k: policy[k] for k in sorted(policy)}, separators=(",", ":"))


def read_cache(path):
    out = {}
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
            out[row["key"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the torn tail of a killed write
    return out


class SubsetEvaluator:
    """metric(model) -> {"metric": float, ...} of the twin at each policy, cached in `cache_path`."""

    def __init__(self, approximator, metric, cache_path):
        self.approx, self.metric = approximator, metric
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache = read_cache(self.cache_path) if self.cache_path is not None else {}

    def score(self, policy):
        """The policy's metrics, computed now (no cache)."""
        return self.metric(self.approx.apply(policy))

    def __call__(self, policy):
        return self.many([policy])[0]

    def many(self, policies, pool=None):
        """Scores of the policies in order, from the cache where measured before; the others are
        computed here or by `pool` (in parallel) and recorded in proposal order."""
        todo = list(dict.fromkeys(policy_key(p) for p in policies if policy_key(p) not in self.cache))
        if todo:
            fresh = [json.loads(k) for k in todo]
            results = pool.map(fresh) if pool is not None else [self.score(p) for p in fresh]
            for key, metrics in zip(todo, results):
                self._record(key, metrics)
        return [self.cache[policy_key(p)]["metrics"] for p in policies]

    def _record(self, key, metrics):
        row = {"key": key, "metrics": metrics}
        self.cache[key] = row
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # A torn line from an earlier kill must not swallow this one: start on a fresh line.
        with open(self.cache_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")
            f.write((json.dumps(row) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
