"""Operations: capacity, metrics, the live console, workers, the ngrok tunnel and stream tokens."""
