"""Every key that crosses the wire, declared once.

Flower's convention is kebab-case for record keys (``num-examples``, ``server-round``); Python
identifiers stay snake_case. Server and client import these names instead of repeating strings.
"""

# Record slots in a Message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CAPS = "caps"
FROZEN = "frozen"  # ArrayRecord: a second adapter applied frozen (flora's global update)

# ConfigRecord keys sent by the server.
SERVER_ROUND = "server-round"
LR = "lr"
CFG_YAML = "cfg-yaml"
WIRE_DTYPE = "wire-dtype"
LABELS = "labels"
RANK = "rank"
ALPHA = "alpha"
SEED = "seed"
FREEZE_A = "freeze-a"  # ffa: regenerate A from lora.init_seed, keep it frozen, upload B only
A_RANK_MAX = "a-rank-max"  # ffa: rank of the shared A the client takes its first rows from
RANK_PATTERN = "rank-pattern"  # JSON {module: rank} of a global adapter whose modules differ
ALPHA_PATTERN = "alpha-pattern"  # JSON {module: alpha}
DP_B_WEIGHT = "dp-b-weight"  # privacy=local: B's weight in the space the strategy averages (s_k or 1)

# MetricRecord / capability keys sent by clients.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
TRAIN_SECONDS = "train-seconds"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
BASE_MODEL_LOADS = "base-model-loads"
WORKER_PID = "worker-pid"
DEVICE = "device"
NUM_TRAIN_EXAMPLES = "num-train-examples"
NUM_EVAL_EXAMPLES = "num-eval-examples"
OWN_DATA = "own-data"  # caps: the node trains on its own data file, not a partition of the shared one
A_HASH = "a-hash"  # ffa: fingerprint of the client's frozen A (fedlora.lora.init.state_hash)
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# Node config keys (deployment: ``flower-supernode --node-config``).
NODE_LORA_RANK = "lora-rank"
NODE_DEVICE = "device"
NODE_QUANTIZATION = "quantization"
NODE_DATA_PATH = "data-path"
NODE_WORKER = "worker"  # the resident worker's socket (fedlora.deploy.worker)
