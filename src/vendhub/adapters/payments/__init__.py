"""Payment gateways behind the PaymentProvider interface."""
