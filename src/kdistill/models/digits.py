"""The demo's models: plain `torch.nn.Module`s on 8x8 digit images that take `pixel_values` and return
`{"logits": ...}`, as the image-classification task expects (Hinton et al. 2015, section 3, used a regularised
teacher and an unregularised small student)."""

from torch import Tensor, nn

NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """The teacher: two 3x3 convolutions, a max-pool and a dropout-regularised two-layer head."""

    def __init__(self, width: int = 16, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width * 16, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, pixel_values: Tensor) -> dict[str, Tensor]:
        return {"logits": self.head(self.features(pixel_values))}


class DigitsMLP(nn.Module):
    """The student: a two-hidden-layer ReLU MLP on the 64 pixels, unregularised like Hinton's small net."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, pixel_values: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(pixel_values)}
