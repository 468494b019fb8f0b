"""Applications built on the library: the demo, studies, the web page and benchmarks."""
