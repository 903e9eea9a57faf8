"""Neural network modules: teachers, students, autoencoders and the method models."""
