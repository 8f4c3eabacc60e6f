"""Pretrained vision-language models: training-free zero-shot scoring (``chexfusion zero-shot``)."""
