"""The steps, in the order firstboot.state.STEPS gives: fetch (the bundle), then each step observes, compares,
then acts or does nothing, and says which. firstboot.agent runs them."""
