"""Agents that pick a keep fraction per layer. Each has `act(state, episode)` -> action in [0, 1]
(relative to the even fraction, or absolute where `absolute`; see space.py; before the budget
wall), `observe(steps, reward, episode)` at the end of an episode with the (state, clipped action)
of every step, and `state_dict` / `load_state_dict` for resume.

- ddpg: AMC's actor-critic (warm-up of random episodes, truncated-normal exploration decaying per
  episode to a floor at the last, replay buffer, soft target updates; every step gets the episode's
  reward minus a moving average, discount 1).
- reinforce: an LSTM controller reading the layers in order, Gaussian actions, moving-average baseline.
- random: uniform random relative actions (log-uniform keep fractions around the even one).
- uniform: one absolute fraction for all layers (the hand-picked policy).
The greedy-by-sensitivity baseline is not an episode-by-episode agent; see run.greedy_search.
"""
import copy

import numpy as np
import torch
from torch import nn

from pipeline.search.space import STATE_DIM


def _mlp(n_in, hidden=300):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class RandomAgent:
    absolute = False  # acts relative to the even fraction (space.py)

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def act(self, state, episode):
        return float(self.rng.uniform(0.0, 1.0))

    def observe(self, steps, reward, episode):
        pass

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]


class UniformAgent(RandomAgent):
    absolute = True

    def __init__(self, action, seed=0):
        super().__init__(seed)
        self.action = action

    def act(self, state, episode):
        return self.action


class DDPGAgent:
    absolute = False

    def __init__(self, episodes, seed=0, warmup=None, sigma0=0.5, sigma_end=0.05, lr_actor=1e-4,
                 lr_critic=1e-3, tau=0.01, batch=64, buffer=2000, hidden=300, updates_per_step=1):
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.warmup = min(100, max(1, episodes // 4)) if warmup is None else warmup
        # Exploration decays geometrically from sigma0 after the warm-up to sigma_end at the last
        # episode: AMC's fixed 0.95 per episode left sigma ~0.003 for the last 60 of 200 episodes,
        # which then proposed the same few policies again and again.
        self.sigma_decay = (sigma_end / sigma0) ** (1 / max(1, episodes - 1 - self.warmup))
        self.sigma0, self.tau, self.batch, self.buffer = sigma0, tau, batch, buffer
        self.updates_per_step = updates_per_step
        self.actor = nn.Sequential(*_mlp(STATE_DIM, hidden), nn.Sigmoid())
        self.critic = _mlp(STATE_DIM + 1, hidden)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.memory = []            # (state, action, reward, next state, done)
        self.moving_average = None  # of episode rewards: the baseline subtracted (AMC)

    def act(self, state, episode):
        if episode < self.warmup:
            return float(self.rng.uniform(0.0, 1.0))
        with torch.no_grad():
            mu = float(self.actor(torch.from_numpy(state)[None])[0, 0])
        sigma = self.sigma(episode)
        for _ in range(100):  # truncated normal on [0, 1]
            a = self.rng.normal(mu, sigma)
            if 0.0 <= a <= 1.0:
                return float(a)
        return float(np.clip(mu, 0.0, 1.0))

    def sigma(self, episode):
        """The exploration noise of an episode after the warm-up."""
        return self.sigma0 * self.sigma_decay ** (episode - self.warmup)

    def observe(self, steps, reward, episode):
        self.moving_average = reward if self.moving_average is None else \
            0.95 * self.moving_average + 0.05 * reward
        r = reward - self.moving_average
        for i, (s, a) in enumerate(steps):
            nxt = steps[i + 1][0] if i + 1 < len(steps) else s
            self.memory.append((s, a, r, nxt, float(i + 1 == len(steps))))
        self.memory = self.memory[-self.buffer:]
        if episode + 1 >= self.warmup:
            for _ in range(len(steps) * self.updates_per_step):
                self._update()

    def _update(self):
        idx = self.rng.integers(len(self.memory), size=min(self.batch, len(self.memory)))
        s, a, r, s2, done = (torch.tensor(np.array(x), dtype=torch.float32) for x in zip(*(self.memory[i] for i in idx)))
        a, r, done = a[:, None], r[:, None], done[:, None]
        with torch.no_grad():
            y = r + (1 - done) * self.critic_t(torch.cat([s2, self.actor_t(s2)], 1))
        loss_c = nn.functional.mse_loss(self.critic(torch.cat([s, a], 1)), y)
        self.opt_c.zero_grad()
        loss_c.backward()
        self.opt_c.step()
        loss_a = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.opt_a.zero_grad()
        loss_a.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(1 - self.tau).add_(self.tau * p)

    def state_dict(self):
        return {"nets": [m.state_dict() for m in (self.actor, self.critic, self.actor_t, self.critic_t)],
                "opts": [self.opt_a.state_dict(), self.opt_c.state_dict()], "memory": self.memory,
                "moving_average": self.moving_average, "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, d):
        for m, sd in zip((self.actor, self.critic, self.actor_t, self.critic_t), d["nets"]):
            m.load_state_dict(sd)
        self.opt_a.load_state_dict(d["opts"][0])
        self.opt_c.load_state_dict(d["opts"][1])
        self.memory, self.moving_average = d["memory"], d["moving_average"]
        self.rng.bit_generator.state = d["rng"]
        torch.set_rng_state(d["torch_rng"])


class ReinforceAgent:
    """An LSTM controller (ENAS/NAS style): it reads each layer's state with the previous action and
    emits the mean of a Gaussian keep fraction; trained by REINFORCE with a moving-average baseline."""
    absolute = False

    def __init__(self, episodes, seed=0, hidden=64, lr=3e-3, sigma=0.15):
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.cell = nn.LSTMCell(STATE_DIM, hidden)
        self.head = nn.Linear(hidden, 1)
        self.log_sigma = nn.Parameter(torch.tensor(float(np.log(sigma))))
        params = [*self.cell.parameters(), *self.head.parameters(), self.log_sigma]
        self.opt = torch.optim.Adam(params, lr=lr)
        self.hc, self.moving_average = None, None
        self.samples = {}  # episode -> raw samples, for the log-probabilities when it is observed

    def act(self, state, episode):
        if episode not in self.samples:
            self.hc = None
        with torch.no_grad():
            self.hc = self.cell(torch.from_numpy(state)[None], self.hc)
            mu = torch.sigmoid(self.head(self.hc[0]))[0, 0]
            a = float(mu + self.log_sigma.exp() * torch.randn((), generator=self.gen))
        self.samples.setdefault(episode, []).append(a)
        return min(1.0, max(0.0, a))

    def observe(self, steps, reward, episode):
        samples = self.samples.pop(episode)
        if self.moving_average is None:
            self.moving_average = reward
            return
        advantage = reward - self.moving_average
        self.moving_average = 0.9 * self.moving_average + 0.1 * reward
        hc, logp = None, 0.0
        dist_sigma = self.log_sigma.exp()
        for (s, _), a in zip(steps, samples):
            hc = self.cell(torch.from_numpy(s)[None], hc)
            mu = torch.sigmoid(self.head(hc[0]))[0, 0]
            logp = logp + torch.distributions.Normal(mu, dist_sigma).log_prob(torch.tensor(a))
        loss = -advantage * logp
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def state_dict(self):
        return {"cell": self.cell.state_dict(), "head": self.head.state_dict(), "log_sigma": self.log_sigma.data,
                "opt": self.opt.state_dict(), "moving_average": self.moving_average, "gen": self.gen.get_state()}

    def load_state_dict(self, d):
        self.cell.load_state_dict(d["cell"])
        self.head.load_state_dict(d["head"])
        self.log_sigma.data.copy_(d["log_sigma"])
        self.opt.load_state_dict(d["opt"])
        self.moving_average = d["moving_average"]
        self.gen.set_state(d["gen"])


def make_agent(name, episodes, seed, uniform_action):
    if name == "ddpg":
        return DDPGAgent(episodes, seed)
    if name == "reinforce":
        return ReinforceAgent(episodes, seed)
    if name == "random":
        return RandomAgent(seed)
    if name == "uniform":
        return UniformAgent(uniform_action, seed)
    raise ValueError(name)
