"""From an image to labels: the stack (stack), preprocessing, the predictors that run a model on a
stack (predictor, lv, device), post-processing and the Segmenter that ties them together."""
