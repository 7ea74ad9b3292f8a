package ijtorch;

import ij.IJ;
import ij.Macro;
import ij.gui.GenericDialog;
import ij.plugin.PlugIn;

/**
 * The PlugIn behind every "ijtorch ..." menu command. ImageJ instantiates it with the command
 * name as argument. Macro options can only be read on ImageJ's macro thread, so they are read
 * here and handed to Python explicitly; without options a dialog built from the Python
 * parameter model asks for them (and GenericDialog records them for the Macro Recorder).
 */
public class IjtorchCommand implements PlugIn {

    @Override
    public void run(String command) {
        IjtorchRegistry.CommandHandler handler = IjtorchRegistry.command(command);
        if (handler == null && IjtorchRemote.configured()) {
            handler = (name, opts) -> IjtorchRemote.runCommand(name, opts);  // no Python here: ask the server
        } else if (handler == null) {
            IjtorchRegistry.reportError(command, "no handler is registered for this command "
                    + "(start ImageJ from Python with ijtorch, or configure an ijtorch server: "
                    + "IJTORCH_SERVER or the IJ Prefs key ijtorch.server)");
            return;
        }
        String options = Macro.getOptions();
        if (options == null) {
            String spec;
            try {
                spec = IjtorchRegistry.command(command) != null ? IjtorchRegistry.dialogSpec(command)
                        : IjtorchRemote.dialogSpec(command);
            } catch (Exception e) {
                IjtorchRegistry.reportError(command, "cannot reach the ijtorch server: " + e.getMessage());
                return;
            }
            options = askOptions(command, spec == null ? "" : spec);
            if (options == null) {
                return;  // dialog cancelled
            }
        }
        String error;
        try {
            error = handler.run(command, options.trim());
        } catch (Throwable t) {
            error = t.getClass().getSimpleName() + ": " + t.getMessage();
        }
        if (error != null) {
            IjtorchRegistry.reportError(command, error);
        }
    }

    /** Shows the dialog described by {@code spec} (lines of kind, key, default, choices, help). */
    static String askOptions(String command, String spec) {
        if (spec.isEmpty()) {
            return "";
        }
        GenericDialog gd = new GenericDialog(command);
        String[] lines = spec.split("\n");
        StringBuilder help = new StringBuilder();
        for (String line : lines) {
            String[] f = line.split("\t", -1);
            String kind = f[0], key = f[1], def = f[2];
            switch (kind) {
                case "number":
                    gd.addStringField(key, def, 10);
                    break;
                case "checkbox":
                    gd.addCheckbox(key, Boolean.parseBoolean(def));
                    break;
                case "choice":
                    String[] choices = f[3].split("\\|");
                    gd.addChoice(key, choices, def);
                    break;
                default:
                    gd.addStringField(key, def, 25);
            }
            if (f.length > 4 && !f[4].isEmpty()) {
                help.append(key).append(": ").append(f[4]).append('\n');
            }
        }
        if (help.length() > 0) {
            gd.addMessage(help.toString());
        }
        gd.showDialog();
        if (gd.wasCanceled()) {
            return null;
        }
        StringBuilder options = new StringBuilder();
        for (String line : lines) {
            String[] f = line.split("\t", -1);
            String kind = f[0], key = f[1];
            String value;
            if ("checkbox".equals(kind)) {
                if (gd.getNextBoolean()) {
                    options.append(key).append(' ');
                }
                continue;
            } else if ("choice".equals(kind)) {
                value = gd.getNextChoice();
            } else {
                value = gd.getNextString();
            }
            options.append(key).append('=');
            options.append(value.contains(" ") || value.isEmpty() ? "[" + value + "]" : value).append(' ');
        }
        return options.toString();
    }
}
