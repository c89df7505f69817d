"""Stand-ins for the outside services (OpenAI, Twilio, Plivo), for the simulator, the tests and the benchmarks."""
