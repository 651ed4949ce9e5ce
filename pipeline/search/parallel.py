"""The search's evaluations on a Ray cluster: one actor per worker holds the model's dense twin and
the task's metric and scores the policies it is sent. The driver alone writes the cache, in
proposal order, so the record is the same whatever the number of workers; an actor that dies is
restarted and its task retried by Ray (max_restarts / max_task_retries), so no evaluation is lost
or recorded twice.

`--workers N` alone starts a local Ray instance with N CPUs; `--ray auto|ADDRESS` joins a running
cluster (every node needs this package installed, e.g. `pip install -e .` in the same path, and the
task's module importable).
"""
import torch

from pipeline.errors import PipelineError
from pipeline.search.evaluator import SubsetEvaluator
from pipeline.search.space import Approximator


class _Worker:
    def __init__(self, model, layer_list, metric, threads, covs):
        torch.set_num_threads(threads)
        self.evaluate = SubsetEvaluator(Approximator(model, layer_list, covs), metric, None)

    def score(self, policy):
        return self.evaluate.score(policy)


class RayPool:
    def __init__(self, model, layer_list, metric, address=None, workers=None, threads=1, covs=None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as e:
            raise PipelineError(f"--ray/--workers need Ray ({e}); pip install ray") from None
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=100 * 2**20)
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        remote = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=-1)(_Worker)
        # The constructor's arguments go to the object store once, and the pool holds them: a killed
        # actor is rebuilt from them, which fails once Ray has freed them (ray-project/ray#53727).
        self.args = [ray.put(a) for a in (model, list(layer_list), metric, threads, covs)]
        self.actors = [remote.remote(*self.args) for _ in range(n)]
        self.pool = ActorPool(self.actors)
        self.ray = ray

    def map(self, policies):
        """Scores in the order of `policies`."""
        return list(self.pool.map(lambda actor, p: actor.score.remote(p), policies))

    def close(self):
        for a in self.actors:
            self.ray.kill(a)
