"""The seeds' published figures, beside our measurements in the reference table, each with the
publication it comes from. FLOPs and savings in these sources are formulas (of parameters, sparsity
or activation), never counts or measurements; they are quoted, not used."""

from __future__ import annotations

SEL_TABLE = "SEL benchmark repository: results/hist_*.csv and its README's Results"

PUBLISHED = {
    "dense": {"test_full": 92.52, "test_100": 93.2, "flops": "33.52 T (formula 2·P·samples)", "time_s": 1398,
              "setup": "ResNet-18 (ImageNet-pretrained backbone), T4, seed 42", "source": SEL_TABLE},
    "lottery": {"test_full": 92.71, "test_100": 93.0, "flops": "6.70 T (phase 2 only, formula x0.2)",
                "time_s": 1460, "setup": "phase 1 (15 dense epochs) not counted", "source": SEL_TABLE},
    "sel-95": {"test_full": 77.26, "test_100": 77.5, "flops": "0.0842 T (formula x(1-sparsity))", "time_s": 835,
               "setup": "50 epochs, 41% of the baseline's sample passes", "source": SEL_TABLE},
    "warmup-sel": {"test_full": 84.70, "test_100": 85.3, "flops": "1.583 T (formula)", "time_s": 875,
                   "setup": "5 + 50 epochs", "source": SEL_TABLE},
    "ast-prod": {"test_full": 92.00, "test_100": None, "flops": "'61.49% energy saved' (formula of activation)",
                 "time_s": 514.7 * 60, "setup": "ImageNet-100, ResNet-50 pretrained on ImageNet-1K, P100; "
                 "best 92.12%; not CIFAR-10",
                 "source": "AST repository: the ImageNet-100 production run's dashboards"},
    "dihcl": {"test_full": 96.76, "test_100": None, "flops": "-", "time_s": None,
              "setup": "DIHCL-Rand, Loss; WRN-28-10, 300 epochs (DIHCL-Exp, Loss: 97.03; random mini-batch: 96.18)",
              "source": "DIHCL (Zhou, Wang, Bilmes, NeurIPS 2020), poster Table 1"},
    "random@ast-prod": {"test_full": None, "test_100": None, "flops": "-", "time_s": None,
                        "setup": "the seeds publish no random control at matched activation",
                        "source": "AST repository (no random baseline in its experiments)"},
}

TINYTL = "TinyTL (Cai et al., NeurIPS 2020), Table 2"
MCUNETV3 = "On-Device Training Under 256KB Memory (Lin et al., NeurIPS 2022)"
TINYTL_SETUP = {"backbone": "ProxylessNAS-Mobile (ImageNet)", "resolution": 224, "epochs": 50,
                "data": "all 50,000 CIFAR-10 training images", "memory_kind": "calculated: batch 8, 8-bit frozen weights"}
MCUNETV3_SETUP = {"resolution": 128, "epochs": 50, "data": "all 50,000 CIFAR-10 training images",
                  "memory_kind": "int8 graphs on a microcontroller"}

# CIFAR-10 transfer rows beside bench transfer's table (reference/transfer-anchors.md): each paper
# counts memory its own way, so memory compares within a paper, never with ours.
# What each row shares with ours and what not: TinyTL swaps BatchNorm for GroupNorm (no running
# statistics), so its rows compare with our frozen-statistics rows; the differences common to every
# row (backbone, resolution, epochs, data, memory's meter) are in the columns beside.
NO_STATS = "no running statistics move (GroupNorm)"
TRANSFER_PUBLISHED = [
    {"method": "classifier", "as": "FT-Last", "acc": 85.9, "memory": "31 MB", "source": TINYTL, **TINYTL_SETUP,
     "matches": f"the classifier alone; {NO_STATS}: our frozen row", "differs": "GroupNorm against BatchNorm"},
    {"method": "bias+bn+classifier", "as": "TinyTL-B (biases)", "acc": 93.7, "memory": "32 MB", "source": TINYTL,
     **TINYTL_SETUP, "matches": f"biases and the classifier; {NO_STATS}: our frozen row",
     "differs": "ours trains the norms' scales too"},
    {"method": "-", "as": "TinyTL-L (lite residual)", "acc": 96.1, "memory": "37 MB", "source": TINYTL, **TINYTL_SETUP,
     "matches": "-", "differs": "lite residual modules without the biases: no row of ours"},
    {"method": "lite-residual", "as": "TinyTL-L+B", "acc": 95.9, "memory": "37 MB", "source": TINYTL, **TINYTL_SETUP,
     "matches": f"lite residual branches beside frozen blocks, with the biases and the classifier; {NO_STATS}: our "
                "frozen row", "differs": "ours trains the norms' scales too; branch shape as TinyTL describes, not its code"},
    {"method": "bn+classifier", "as": "FT-Norm+Last", "acc": 94.8, "memory": "192 MB", "source": TINYTL,
     **TINYTL_SETUP, "matches": f"norm scales and shifts, the classifier; {NO_STATS}: our frozen row",
     "differs": "GroupNorm against BatchNorm"},
    {"method": "full FT", "as": "full fine-tuning", "acc": 97.1, "memory": "391 MB", "source": TINYTL, **TINYTL_SETUP,
     "matches": "every parameter", "differs": "GroupNorm (ours re-estimates BatchNorm statistics)"},
    {"method": "last-k", "as": "last 2 blocks, fp32", "acc": 86.0, "memory": "-", "source": MCUNETV3,
     **MCUNETV3_SETUP, "backbone": "MCUNet-5FPS (ImageNet int8 54.1%)", "matches": "the network's last blocks",
     "differs": "MCUNetV3 counts its blocks"},
    {"method": "last-k", "as": "last 2 blocks, int8 with quantization-aware scaling", "acc": 86.9, "memory": "-",
     "source": MCUNETV3, **MCUNETV3_SETUP, "backbone": "MCUNet-5FPS (ImageNet int8 54.1%)",
     "matches": "the network's last blocks", "differs": "int8 training; MCUNetV3 counts its blocks"},
    {"method": "sparse", "as": "sparse update searched under 100 KB (± 0.17)", "acc": 86.99, "memory": "100 KB extra",
     "source": MCUNETV3, **MCUNETV3_SETUP, "backbone": "MobileNetV2-w0.35 (ImageNet int8 45.7%)",
     "matches": "biases everywhere, the classifier, the weights of some blocks",
     "differs": "searched per layer under a memory budget (ours: whole blocks by the warmup's Fisher information); int8"},
]
