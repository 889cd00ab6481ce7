"""The ML code `train` and `tune` share (neither stage imports the other): model (the
architectures), augment, data (the tf.data input pipeline and model.fit's arguments),
schedules, optimizers, callbacks, network (build and compile a recipe), devices, weights
(saved models and their hash) and gate (the paired statistics behind every promotion and
adoption)."""
