"""AutoML rank search (ShrinkML): the space, agents, rewards, subset evaluation and the search loop."""
