"""The Ray adapter: the only code in the broker that imports `ray`.

- `executor`: `RayExecutor`, the `ports.Executor` on Ray (placement groups, runner actors, logs);
- `runner`: the runner actor shipped to the nodes by value; imports only stdlib and ray, so a
  worker node needs nothing of the broker installed;
- `warm`: the per-node pool of idle runner actors (the fast dispatch path);
- `local`: start and stop a local Ray head (and labelled fake nodes) for `broker up` and tests;
- `node_agents`: the node agents as Ray actors pinned one per node;
- `jobs_baseline`: the Ray Jobs API client the dispatch benchmark compares against.
"""
