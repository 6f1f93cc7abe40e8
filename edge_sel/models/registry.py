"""The built-in models by name (what `--model NAME` and `edge-sel models` list)."""

from edge_sel.models.edgecnn import EdgeCNN
from edge_sel.models.groupnorm import GroupNormCNN
from edge_sel.models.mobilenet import MobileNetV2
from edge_sel.models.resnet import ResNet18Cifar

MODELS = {
    "resnet18_cifar": ResNet18Cifar,
    "edgecnn": EdgeCNN,
    "mobilenetv2": MobileNetV2,
    "groupnorm_cnn": GroupNormCNN,
}
