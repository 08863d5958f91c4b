"""Edge stylizer service: the DNN, its training and on-edge retraining."""
