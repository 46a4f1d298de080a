"""Video metrics: one pure function per metric, each tested on videos whose answer is known."""
