"""Pins and settings of one vending machine: the only file to edit per board."""

# --- identity and network -------------------------------------------------------------
MACHINE_ID = "VM01"  # [A-Za-z0-9_-]{1,50}; also the MQTT username
WIFI_SSID = "vending-wifi"
WIFI_PASSWORD = "change-me"
MQTT_HOST = "192.168.1.10"
MQTT_PORT = 1883  # 8883 with MQTT_TLS
MQTT_TLS = False
MQTT_USERNAME = None  # None: the machine id (protocol.md, "Connecting: the device's login")
MQTT_PASSWORD = ""  # this machine's broker password
MQTT_PREFIX = "vm"
MQTT_KEEPALIVE_S = 30  # protocol.md: at most 30
NTP_HOST = "pool.ntp.org"
NTP_RETRY_S = 60  # until the clock is set
NTP_RESYNC_S = 21600  # afterwards, against RTC drift

# --- pins (ESP32 DevKitC; see README.md for the wiring drawing) ------------------------
# Slot number -> GPIO driving that spiral's motor through one ULN2803 channel.
SLOT_MOTOR_PINS = {1: 25, 2: 26, 3: 27, 4: 32, 5: 33, 6: 4}
DROP_SENSOR_PIN = 18  # IR beam-break receiver, open collector: LOW while the beam is broken
DROP_SENSOR_PULL_UP = True
STALL_SENSE_PIN = None  # optional over-current comparator output, HIGH on a stalled motor
HOME_SWITCH_PIN = None  # optional spiral cam switches (wired-OR), LOW at the home position
MAINTENANCE_SWITCH_PIN = 19  # service key switch to GND: closed = MAINTENANCE
TEMP_ADC_PIN = 36  # NTC thermistor divider (10 k NTC to GND, 10 k to 3V3)
STATUS_LED_PIN = 2

# --- NTC thermistor (Beta model) --------------------------------------------------------
NTC_BETA = 3950
NTC_R25 = 10000
NTC_SERIES_R = 10000

# --- behaviour ---------------------------------------------------------------------------
TELEMETRY_INTERVAL_S = 60  # until a retained config says otherwise
WATCHDOG_MS = 30000  # the board resets if the main loop stalls this long
LOOP_SLEEP_MS = 10
MAINTENANCE_DEBOUNCE_MS = 200
STATE_FILE = "/state.json"  # the last 32 results, the applied config
MQTT_CA_FILE = None  # with MQTT_TLS: a PEM/DER CA file on the board's flash, e.g. "/ca.pem"
