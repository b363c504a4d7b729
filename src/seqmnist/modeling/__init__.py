"""The recurrent classifier: its layers, our LSTM kernel, weight averaging and the training loop."""
