"""The built-in models by name (what `--model NAME` and `edge-sel models` list), and the published
weights some of them start from (`--pretrained imagenet`)."""

from edge_sel.models import efficientnet_lite
from edge_sel.models.edgecnn import EdgeCNN
from edge_sel.models.groupnorm import GroupNormCNN
from edge_sel.models.mobilenet import MobileNetV2
from edge_sel.models.resnet import ResNet18Cifar

MODELS = {
    "resnet18_cifar": ResNet18Cifar,
    "edgecnn": EdgeCNN,
    "mobilenetv2": MobileNetV2,
    "groupnorm_cnn": GroupNormCNN,
    "efficientnet_lite0": efficientnet_lite.efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite.efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite.efficientnet_lite2,
}

# ImageNet weights by model name (models.weights_config.WeightsConfig).
PRETRAINED = dict(efficientnet_lite.WEIGHTS)
